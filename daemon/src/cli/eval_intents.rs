//! `qwenedge eval-intents`: runs a JSONL dataset of utterances with their expected intents
//! through the running daemon's `intent` op and reports exact-match accuracy of the intent name
//! and of the slots, the confusions between intents, and latency percentiles, as one JSON
//! object. Each dataset line is `{"text": "...", "intent": "HassLightSet" | null,
//! "slots": {"name": "kitchen light", "brightness": 40}}`; `null` means "no intent".

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use qwenedge_config::SocketSettings;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Arguments of `qwenedge eval-intents`.
#[derive(Debug, Args)]
pub struct EvalIntentsArgs {
    /// The dataset (one JSON object per line).
    #[arg(long)]
    dataset: PathBuf,
    /// The daemon's socket (default: as the daemon chooses it).
    #[arg(long, env = "QWENEDGE__SOCKET__PATH")]
    socket: Option<PathBuf>,
    /// Print each utterance whose answer did not match, on stderr.
    #[arg(long)]
    show_errors: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    text: String,
    intent: Option<String>,
    #[serde(default)]
    slots: Map<String, Value>,
}

/// A slot value as compared: numbers by value, everything else as its text.
fn norm(v: &Value) -> String {
    match v {
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |x| x.to_string()),
        Value::String(s) => s.to_lowercase(),
        other => other.to_string(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `eval-intents`.
pub fn run(args: EvalIntentsArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.dataset).with_context(|| format!("{}", args.dataset.display()))?;
    let mut cases = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let case: Case = serde_json::from_str(line).with_context(|| format!("{}:{}", args.dataset.display(), n + 1))?;
        cases.push(case);
    }
    anyhow::ensure!(!cases.is_empty(), "{}: no utterances", args.dataset.display());
    let path = args.socket.clone().unwrap_or_else(|| SocketSettings::default().path());
    let stream = UnixStream::connect(&path).map_err(|e| anyhow::anyhow!("{}: cannot connect to the daemon: {e}", path.display()))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let (mut names_ok, mut exact, mut latencies) = (0usize, 0usize, Vec::new());
    let mut confusion: BTreeMap<String, usize> = BTreeMap::new();
    for (i, case) in cases.iter().enumerate() {
        let id = format!("eval-{i}");
        let began = Instant::now();
        writeln!(writer, "{}", json!({"id": id, "op": "intent", "text": case.text}))?;
        let event = loop {
            let mut line = String::new();
            anyhow::ensure!(reader.read_line(&mut line)? > 0, "the daemon closed the connection");
            let v: Value = serde_json::from_str(&line)?;
            if v["id"] == id.as_str() && v["event"] != "token" {
                break v;
            }
        };
        latencies.push(began.elapsed().as_secs_f64() * 1e3);
        if event["event"] == "error" {
            anyhow::bail!("{}: {}", case.text, event["message"].as_str().unwrap_or(""));
        }
        let got = if event["recognized"] == true { event["intent"]["name"].as_str().map(str::to_string) } else { None };
        let got_slots: BTreeMap<String, String> = event["slots"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["name"].as_str()?.to_string(), norm(&s["value"]))))
            .collect();
        let want_slots: BTreeMap<String, String> = case.slots.iter().map(|(k, v)| (k.clone(), norm(v))).collect();
        let name_ok = got == case.intent;
        names_ok += usize::from(name_ok);
        let all_ok = name_ok && got_slots == want_slots;
        exact += usize::from(all_ok);
        if !name_ok {
            let label = |n: &Option<String>| n.clone().unwrap_or_else(|| "(none)".into());
            *confusion.entry(format!("{} -> {}", label(&case.intent), label(&got))).or_default() += 1;
        }
        if args.show_errors && !all_ok {
            eprintln!("{:?}: expected {:?} {want_slots:?}, got {got:?} {got_slots:?}", case.text, case.intent);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let n = cases.len() as f64;
    let summary = json!({
        "utterances": cases.len(),
        "intent_accuracy": names_ok as f64 / n,
        "exact_match": exact as f64 / n,
        "latency_ms": {"p50": percentile(&latencies, 0.5), "p95": percentile(&latencies, 0.95), "max": latencies.last()},
        "confusion": confusion,
    });
    println!("{summary}");
    Ok(())
}
