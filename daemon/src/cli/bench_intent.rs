//! `qwenedge bench --intent`: time to first token of a voice-assistant intent request, with and
//! without the prefix-state cache, in one run. The prompt is the one the `intent` op renders:
//! the catalog's fixed part (system prompt + tools, through the model's chat template) followed
//! by a short utterance; the cached run restores the catalog's pinned snapshot and prefills only
//! the utterance turn. A human table goes to stderr, one JSON line to stdout.

use std::time::Instant;

use qwenedge::engine::generate::{GenerateParams, Step};
use qwenedge::engine::Engine;
use qwenedge::intent::Catalog;
use serde_json::json;

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

/// Runs the intent benchmark with `catalog` and prints the figures.
pub fn run(engine: &mut Engine, catalog: &Catalog, utterance_tokens: usize, runs: usize, threads: usize) -> anyhow::Result<()> {
    let (text, n_utterance) = utterance(engine, utterance_tokens)?;
    let chat = qwenedge::intent::prepare(catalog, &text, None, &Default::default()).chat;
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
    println!("{line}");
    Ok(())
}
