//! `qwenedge bench --ep-library EP=PATH`: the same prompt through ONNX Runtime's CPU provider
//! and through a plugin provider (QNN, OpenVINO) in one run: speed of each and their ratio,
//! where the plugin's nodes went, and how far its numbers are from the CPU's (greedy tokens
//! matched; the largest logit difference and the top-token agreement at every position of
//! the CPU's answer, fed to both).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use qwenedge_engine::backend::plugins::EpLibrary;
use qwenedge_engine::backend::providers::ProviderRequest;
use qwenedge_engine::backend::{Logits, LogitsWanted};
use qwenedge_engine::Engine;

use super::bench::{prompt, speed, Speed};
use super::{rss_mb, ModelArgs};

/// The last logits after `prompt` and after each token of `answer` but the last.
fn forced_logits(engine: &mut Engine, prompt: &[u32], answer: &[u32]) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut seq = engine.new_sequence()?;
    let mut out = Logits::default();
    let mut rows = Vec::new();
    engine.backend_mut().forward(&mut seq, prompt, LogitsWanted::Last, &mut out)?;
    rows.push(out.last().to_vec());
    for &t in &answer[..answer.len().saturating_sub(1)] {
        engine.backend_mut().forward(&mut seq, &[t], LogitsWanted::Last, &mut out)?;
        rows.push(out.last().to_vec());
    }
    Ok(rows)
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// One provider's figures.
struct Run {
    load_ms: f64,
    speed: Speed,
    logits: Vec<Vec<f32>>,
    rss_mb: f64,
    placement: String,
    /// `qnn on NPU (Qualcomm)`, or `qnn (skipped)`.
    provider: String,
    /// Why the plugin provider was skipped.
    skipped: Option<String>,
}

fn measure(
    model: &ModelArgs,
    providers: Vec<ProviderRequest>,
    n: usize,
    new: usize,
    runs: usize,
    answer: Option<&[u32]>,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut engine = model.load_with(providers)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let info = engine.backend_info();
    let prompt = prompt(&engine, n)?;
    let speed = speed(&mut engine, &prompt, new, runs)?;
    let logits = forced_logits(&mut engine, &prompt, answer.unwrap_or(&speed.tokens))?;
    let (provider, skipped) = match info.providers.iter().find(|p| p.name != "cpu") {
        Some(p) if p.active => (format!("{} on {}", p.name, p.device.as_deref().unwrap_or("?")), None),
        Some(p) => (format!("{} (skipped)", p.name), Some(p.reason.clone().unwrap_or_default())),
        None => ("cpu".into(), None),
    };
    let placement = info.placement.map(|p| p.summary()).unwrap_or_default();
    Ok(Run { load_ms, speed, logits, rss_mb: rss_mb().unwrap_or(0.0), placement, provider, skipped })
}

/// Runs the comparison; `spec` is `EP=PATH`, `options` `KEY=VALUE` each.
pub fn run(model: &ModelArgs, spec: &str, options: &[String], n: usize, new: usize, runs: usize) -> anyhow::Result<()> {
    let (ep, path) = spec.split_once('=').context("--ep-library takes EP=PATH (qnn=/path/to/libonnxruntime_providers_qnn.so)")?;
    let options: BTreeMap<String, String> = options
        .iter()
        .map(|o| o.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).with_context(|| format!("--ep-option '{o}': KEY=VALUE")))
        .collect::<anyhow::Result<_>>()?;
    let lib = EpLibrary { ep: ep.to_string(), path: path.into(), device: None, vendor: None };
    let cpu = measure(model, Vec::new(), n, new, runs, None)?;
    let request = ProviderRequest { name: ep.to_string(), options: options.clone(), plugin: Some(lib) };
    let cpu_request = ProviderRequest { name: "cpu".into(), ..Default::default() };
    let plug = measure(model, vec![request, cpu_request], n, new, runs, Some(&cpu.speed.tokens))?;
    let matched = cpu.speed.tokens.iter().zip(&plug.speed.tokens).take_while(|(a, b)| a == b).count();
    let max_diff =
        cpu.logits.iter().zip(&plug.logits).flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs())).fold(0.0f32, f32::max);
    let top_agree = cpu.logits.iter().zip(&plug.logits).filter(|(a, b)| argmax(a) == argmax(b)).count();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    eprintln!("qwenedge bench  {}  ({} threads, {n}/{new} tokens, {runs} runs, median)", model.path()?.display(), model.threads);
    eprintln!("  {:<28} {:>9} {:>10} {:>10} {:>9} {:>9}", "provider", "load ms", "prefill/s", "decode/s", "TTFT ms", "RSS MiB");
    for (name, r) in [("cpu", &cpu), (plug.provider.as_str(), &plug)] {
        let s = &r.speed;
        eprintln!("  {name:<28} {:>9.0} {:>10.1} {:>10.1} {:>9.1} {:>9.0}", r.load_ms, s.prefill, s.decode, s.ttft, r.rss_mb);
    }
    eprintln!(
        "  ratio to cpu                 prefill {:.2}, decode {:.2}",
        ratio(plug.speed.prefill, cpu.speed.prefill),
        ratio(plug.speed.decode, cpu.speed.decode)
    );
    if let Some(why) = &plug.skipped {
        eprintln!("  skipped          {why}: both rows ran on the CPU provider");
    }
    eprintln!("  placement        {}", plug.placement);
    eprintln!(
        "  agreement        greedy tokens {matched}/{} equal before the first difference; top token {top_agree}/{} positions; max |logit diff| {max_diff:.3e}",
        cpu.speed.tokens.len(),
        cpu.logits.len()
    );
    let figures = |r: &Run| serde_json::json!({"load_ms": r.load_ms, "prefill_tok_s": r.speed.prefill, "decode_tok_s": r.speed.decode, "ttft_ms": r.speed.ttft, "rss_mb": r.rss_mb});
    let json = serde_json::json!({
        "engine": "qwenedge",
        "model": model.path()?.display().to_string(),
        "threads": model.threads,
        "prompt_tokens": n,
        "new_tokens": new,
        "runs": runs,
        "ep": ep,
        "ep_options": options,
        "provider": plug.provider,
        "skipped": plug.skipped,
        "cpu": figures(&cpu),
        "plugin": figures(&plug),
        "prefill_ratio": ratio(plug.speed.prefill, cpu.speed.prefill),
        "decode_ratio": ratio(plug.speed.decode, cpu.speed.decode),
        "placement": plug.placement,
        "greedy_tokens_matched": matched,
        "top_token_agreement": top_agree,
        "positions": cpu.logits.len(),
        "max_logit_diff": max_diff,
    });
    println!("{json}");
    Ok(())
}
