//! `qwenedge bench --intent`: time to first token of a voice-assistant intent request, with and
//! without the prefix-state cache, in one run, in this process. The prompt is the one the
//! `intent` op renders: the catalog's fixed part (system prompt + tools, through the model's
//! chat template) followed by a short utterance; the cached run restores the catalog's pinned
//! snapshot and prefills only the utterance turn. Then the same model through the daemon
//! (`bench_daemon`): intent latency, model passes and start-up with and without a saved catalog
//! state. A human table goes to stderr, one JSON line to stdout.

use std::time::Instant;

use qwenedge_engine::generate::{GenerateParams, Step};
use qwenedge_engine::Engine;
use qwenedge_intent::Catalog;
use serde_json::{json, Value};

use super::bench_daemon::{mean, quantile, DaemonFigures};

/// Words the utterance is cut from until it has the wanted number of tokens.
const UTTERANCE: &str = "please turn the kitchen ceiling lights to forty percent brightness and then \
switch off the hallway lamp before the movie starts in the living room";

/// Median of the measured runs.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The first words of [`UTTERANCE`] that encode to at least `tokens` tokens.
fn utterance(engine: &Engine, tokens: usize) -> anyhow::Result<(String, usize)> {
    let mut text = String::new();
    for word in UTTERANCE.split_whitespace() {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(word);
        let n = engine.tokenizer.encode(&text)?.len();
        if n >= tokens {
            return Ok((text, n));
        }
    }
    let n = engine.tokenizer.encode(&text)?.len();
    Ok((text, n))
}

/// Milliseconds from the call to the first generated token (or the end, if the first token
/// ends the generation).
fn time_to_first_token(engine: &mut Engine, prompt: &[u32], context: usize) -> anyhow::Result<f64> {
    let params = GenerateParams { max_tokens: 1, ..Default::default() };
    let began = Instant::now();
    let mut decoder = engine.cached_decoder(prompt.to_vec(), &[], params, context)?;
    while let Step::Prefilled { .. } = engine.step(&mut decoder)? {}
    Ok(began.elapsed().as_secs_f64() * 1e3)
}

/// Runs the in-process part of the intent benchmark with `catalog`, prints its figures and
/// returns them as the JSON line's first fields.
pub fn run(engine: &mut Engine, catalog: &Catalog, utterance_tokens: usize, runs: usize, threads: usize) -> anyhow::Result<Value> {
    let (text, n_utterance) = utterance(engine, utterance_tokens)?;
    let chat = qwenedge_intent::prepare(catalog, &text, None, &Default::default()).chat;
    let prompt = engine.tokenizer.encode(&engine.render_chat(&chat)?)?;
    let context = engine.spec.context_length;
    anyhow::ensure!(prompt.len() < context, "the prompt ({} tokens) does not fit the model's context", prompt.len());

    engine.configure_cache(0, 1);
    let mut cold = Vec::new();
    for i in 0..=runs {
        let ms = time_to_first_token(engine, &prompt, context)?;
        if i > 0 {
            cold.push(ms);
        }
    }

    engine.configure_cache(usize::MAX, 1);
    let began = Instant::now();
    let fixed = engine.pin_chat_prefix(&chat)?;
    let pin_ms = began.elapsed().as_secs_f64() * 1e3;
    let snapshot_bytes = engine.cache_stats().bytes;
    let mut cached = Vec::new();
    for i in 0..=runs {
        let ms = time_to_first_token(engine, &prompt, context)?;
        if i > 0 {
            cached.push(ms);
        }
    }
    let stats = engine.cache_stats();
    anyhow::ensure!(
        stats.hits == runs as u64 + 1 && stats.reused_tokens == stats.hits * fixed as u64,
        "the cached runs did not all reuse the catalog prefix ({stats:?})"
    );

    let (cold, cached) = (median(cold), median(cached));
    let ratio = cached / cold;
    let snapshot_mb = snapshot_bytes as f64 / (1024.0 * 1024.0);
    let info = engine.backend_info();
    eprintln!("qwenedge bench --intent  {}", engine.spec.dir.display());
    eprintln!("  runtime          {} {} ({threads} threads)", info.name, info.version);
    eprintln!(
        "  prompt           {} tokens = catalog {} + utterance turn {} ({n_utterance}-token utterance)",
        prompt.len(),
        fixed,
        prompt.len() - fixed
    );
    eprintln!("  catalog prefill  {pin_ms:>9.1} ms once  (snapshot {snapshot_mb:.1} MiB)");
    eprintln!("  TTFT cold        {cold:>9.1} ms  (median of {runs})");
    eprintln!("  TTFT cached      {cached:>9.1} ms  ({ratio:.3} × cold)");
    let line = json!({
        "engine": "qwenedge",
        "bench": "intent",
        "backend": info.name,
        "runtime_version": info.version,
        "model": engine.spec.dir.display().to_string(),
        "threads": threads,
        "runs": runs,
        "prompt_tokens": prompt.len(),
        "catalog_tokens": fixed,
        "utterance_tokens": n_utterance,
        "utterance": text,
        "ttft_ms_cold": cold,
        "ttft_ms_cached": cached,
        "ttft_ratio": ratio,
        "speedup": cold / cached,
        "catalog_prefill_ms": pin_ms,
        "snapshot_mb": snapshot_mb,
    });
    Ok(line)
}

/// Prints the daemon part's figures and adds them to `line`.
pub fn report_daemon(line: &mut Value, d: &DaemonFigures) {
    let (b, o) = (&d.batched, &d.one_by_one);
    let (p50, p95) = (quantile(&b.intent_ms, 0.5), quantile(&b.intent_ms, 0.95));
    let p50_one = quantile(&o.intent_ms, 0.5);
    let (steps, forced, tokens) = (mean(&b.model_steps), mean(&b.forced_tokens), mean(&b.completion_tokens));
    let ratio = d.ready_ms_snapshot / d.ready_ms_cold;
    let same = b.texts.iter().zip(&o.texts).filter(|(x, y)| x == y).count();
    eprintln!("  through the daemon ({} utterances over the socket, {} recognised)", b.intent_ms.len(), b.recognized);
    eprintln!("  intent p50       {p50:>9.1} ms  (p95 {p95:.1} ms, request to intent result)");
    eprintln!("  one by one p50   {p50_one:>9.1} ms  ({:.3} batched/one by one; {same} of {} answers alike)", p50 / p50_one, b.texts.len());
    eprintln!(
        "  model passes     {steps:>9.2} per answer of {tokens:.2} tokens ({forced:.2} forced; one by one: {:.2})",
        mean(&o.model_steps)
    );
    eprintln!("  ready, cold      {:>9.1} ms  (process start to the first intent answered)", d.ready_ms_cold);
    eprintln!(
        "  ready, snapshot  {:>9.1} ms  ({ratio:.3} × cold; the catalog state read from disk; median of 3 starts)",
        d.ready_ms_snapshot
    );
    let extra = json!({
        "utterances": b.intent_ms.len(),
        "recognized": b.recognized,
        "intent_p50_ms": p50,
        "intent_p95_ms": p95,
        "intent_p50_ms_one_by_one": p50_one,
        "intent_p95_ms_one_by_one": quantile(&o.intent_ms, 0.95),
        "intent_ratio": p50 / p50_one,
        "answers_alike": same,
        "model_steps_mean": steps,
        "model_steps_mean_one_by_one": mean(&o.model_steps),
        "forced_tokens_mean": forced,
        "completion_tokens_mean": tokens,
        "steps_per_token": if tokens > 0.0 { steps / tokens } else { 0.0 },
        "ready_ms_cold": d.ready_ms_cold,
        "ready_ms_snapshot": d.ready_ms_snapshot,
        "ready_ratio": ratio,
    });
    if let (Some(obj), Value::Object(more)) = (line.as_object_mut(), extra) {
        obj.extend(more);
    }
}
