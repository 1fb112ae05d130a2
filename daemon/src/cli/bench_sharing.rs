//! `qwenedge bench --sharing`, through the daemon: what a short chat (a voice command's size)
//! waits for when another client's long work is in progress. It starts `qwenedge serve` on the
//! model with the default scheduling settings and measures, client side, the chat's time to first
//! token on the idle daemon, while a 4,096-token prompt prefills, and while a 2,000-token
//! generation runs — each beside the idle figure of the same run, with the slice the scheduler
//! promises it waits for at most (one prefill chunk, or `scheduler.turn_tokens` decode steps).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::bench_daemon::{config_text, wait_pinned, wait_status, Connection, Served};
use super::ModelArgs;
use qwenedge_config::Settings;

/// Tokens of the long prompt.
const LONG_PROMPT_TOKENS: usize = 4096;

/// Tokens of the long generation.
const LONG_GENERATION_TOKENS: usize = 2000;

/// The chat measured: what a voice command sends.
fn chat(id: &str) -> Value {
    json!({"id": id, "op": "chat", "messages": [{"role": "user", "content": "Turn on the kitchen light, please."}],
           "max_tokens": 4, "temperature": 0, "stream": true})
}

/// Sends the chat on `c` and returns its time to first token (ms, client side).
fn ttft(c: &mut Connection, id: &str) -> anyhow::Result<f64> {
    let began = Instant::now();
    c.send(&chat(id))?;
    let mut first = None;
    loop {
        let e = c.event()?;
        if e["id"] != id {
            continue;
        }
        anyhow::ensure!(e["event"] != "error", "the chat failed: {e}");
        if e["event"] == "token" {
            first.get_or_insert_with(|| began.elapsed().as_secs_f64() * 1e3);
        } else {
            return Ok(first.unwrap_or_else(|| began.elapsed().as_secs_f64() * 1e3));
        }
    }
}

/// Reads `c`'s events to `id`'s terminal one and returns it.
fn until_end(c: &mut Connection, id: &str) -> anyhow::Result<Value> {
    loop {
        let e = c.event()?;
        if e["id"] == id && e["event"] != "token" {
            anyhow::ensure!(e["event"] == "done" || e["code"] == "cancelled", "{id} failed: {e}");
            return Ok(e);
        }
    }
}

/// A prompt of about `tokens` tokens: `unit` repeated, as many times as its measured length
/// says, after a tag that makes each run's prompt its own.
fn long_prompt(c: &mut Connection, tokens: usize) -> anyhow::Result<impl Fn(usize) -> String> {
    let unit = super::bench::PARAGRAPH;
    let probe = c.call(&json!({"id": "probe", "op": "complete", "prompt": unit.repeat(8), "max_tokens": 1}))?;
    let per_unit = probe["usage"]["prompt_tokens"].as_f64().unwrap_or(1.0) / 8.0;
    let repeats = (tokens as f64 / per_unit).ceil() as usize;
    Ok(move |run: usize| format!("Document {run}. {}", unit.repeat(repeats)))
}

/// Waits until the daemon has a request in progress.
fn wait_in_progress(c: &mut Connection) -> anyhow::Result<()> {
    wait_status(c, "the long request's start", Duration::from_secs(60), |s| s["sequences"]["in_progress"].as_u64() >= Some(1))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark: `runs` measured chats each way (the median is reported), one unmeasured
/// first.
pub fn run(model: &ModelArgs, runs: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (socket, log, config) = (dir.path().join("qwenedge.sock"), dir.path().join("daemon.log"), dir.path().join("config.toml"));
    let given = model.model.clone().unwrap_or_default();
    let path = given.canonicalize().unwrap_or(given);
    let text = config_text(model, None, &socket, &dir.path().join("prefix"), true);
    std::fs::write(&config, text)?;
    let mut served = Served::start(&config, &socket, &log)?;
    let (mut long, mut short, mut watch) = (served.connect()?, served.connect()?, served.connect()?);
    wait_pinned(&mut watch)?;
    let prompt = long_prompt(&mut long, LONG_PROMPT_TOKENS)?;

    // Idle.
    ttft(&mut short, "warm")?;
    let idle = median((0..runs).map(|i| ttft(&mut short, &format!("idle{i}"))).collect::<anyhow::Result<_>>()?);

    // While a long prompt prefills: the chat is sent once the prompt is in progress.
    let (mut during_prefill, mut prompt_tokens, mut prefill_ms) = (Vec::new(), 0.0, Vec::new());
    for i in 0..=runs {
        let id = format!("long-prompt{i}");
        long.send(&json!({"id": id, "op": "complete", "prompt": prompt(i), "max_tokens": 1, "stream": true}))?;
        wait_in_progress(&mut watch)?;
        let t = ttft(&mut short, &format!("during-prefill{i}"))?;
        let done = until_end(&mut long, &id)?;
        prompt_tokens = done["usage"]["prompt_tokens"].as_f64().unwrap_or(0.0);
        if i > 0 {
            during_prefill.push(t);
            prefill_ms.push(done["timings"]["prefill_ms"].as_f64().unwrap_or(0.0));
        }
    }
    let (during_prefill, prefill_ms) = (median(during_prefill), median(prefill_ms));

    // While a long generation runs: the chat is sent once its first tokens have come.
    let (mut during_decode, mut token_ms) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        let id = format!("long-generation{i}");
        long.send(
            &json!({"id": id, "op": "complete", "prompt": format!("Story {i}: once upon a time"), "max_tokens": LONG_GENERATION_TOKENS,
                          "temperature": 0.8, "seed": i, "stream": true}),
        )?;
        let mut arrivals = Vec::new();
        while arrivals.len() < 32 {
            let e = long.event()?;
            anyhow::ensure!(e["event"] == "token", "the long generation ended early: {e}");
            arrivals.push(Instant::now());
        }
        let t = ttft(&mut short, &format!("during-decode{i}"))?;
        long.send(&json!({"id": id, "op": "cancel"}))?;
        until_end(&mut long, &id)?;
        if i > 0 {
            during_decode.push(t);
            token_ms.push((arrivals[31] - arrivals[8]).as_secs_f64() * 1e3 / 23.0);
        }
    }
    let (during_decode, token_ms) = (median(during_decode), median(token_ms));
    served.stop()?;

    let defaults = Settings::default();
    let chunk = defaults.model.prefill_chunk_tokens;
    let turn_tokens = defaults.scheduler.turn_tokens;
    let chunk_ms = prefill_ms * chunk as f64 / prompt_tokens.max(1.0);
    let decode_slice_ms = token_ms * turn_tokens as f64;
    eprintln!("time to first token of a 4-token chat (median of {runs}, ms; {} threads):", model.threads);
    eprintln!("  {:<38}{idle:>8.1}", "idle daemon");
    eprintln!(
        "  {:<38}{during_prefill:>8.1}   goal <= idle + one {chunk}-token chunk ({chunk_ms:.0} ms) = {:.0}; the prompt's prefill takes {prefill_ms:.0} ms",
        format!("while a {prompt_tokens:.0}-token prompt prefills"),
        idle + chunk_ms
    );
    eprintln!(
        "  {:<38}{during_decode:>8.1}   goal <= idle + {turn_tokens} tokens ({decode_slice_ms:.0} ms) = {:.0}",
        format!("while a {LONG_GENERATION_TOKENS}-token generation runs"),
        idle + decode_slice_ms
    );
    println!(
        "{}",
        json!({
            "bench": "sharing", "model": path, "threads": model.threads, "runs": runs,
            "idle_ttft_ms": idle, "prompt_tokens": prompt_tokens, "prefill_ms": prefill_ms, "chunk_tokens": chunk, "chunk_ms": chunk_ms,
            "during_prefill_ttft_ms": during_prefill, "during_prefill_goal_ms": idle + chunk_ms,
            "token_ms": token_ms, "turn_tokens": turn_tokens, "during_decode_ttft_ms": during_decode,
            "during_decode_goal_ms": idle + decode_slice_ms,
        })
    );
    Ok(())
}
