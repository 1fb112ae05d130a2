//! The daemon serving through a model's static graphs (`model.backend = "static"`, the graphs
//! made by `models/npu/static_graphs.py`): on the CPU provider its greedy answers, intents and
//! prefix-cache reuse are those of the export it was made from; on QNN's HTP simulator every
//! node of the decode graph but the 4-bit embedding lookup runs on the HTP (so
//! `strict_providers` accepts it), it serves a chat and an intent, and a second start loads the
//! graphs the first compiled instead of preparing them again.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tempfile::TempDir;

use crate::common::daemon::{chat, streamed_text, Daemon};
use crate::common::model_dir;
use crate::common::wait::Bounded;
use crate::plugin_eps::plugin;

/// The static graphs of the tiny-a int4 fixture: prefill chunks of `chunk` tokens, a KV buffer
/// of 4,096 (the intent prompt takes 2,300).
fn static_dir(chunk: usize) -> TempDir {
    let out = tempfile::tempdir().unwrap();
    let python = std::env::var("QWENEDGE_FIXTURE_PYTHON").expect("QWENEDGE_FIXTURE_PYTHON (deploy/test.sh sets it: models/venv.sh)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/npu/static_graphs.py");
    let made = Command::new(python)
        .arg(script)
        .arg(model_dir("tiny-a", "int4"))
        .arg(out.path())
        .args(["--chunk", &chunk.to_string(), "--context", "4096"])
        .output_in_time();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    out
}

/// Greedy answers to chats (a prompt of several chunks among them) and an intent, and the
/// tokens the repeated chat took from the prefix cache.
fn answers(d: &Daemon) -> (Vec<String>, f64, u64) {
    let mut c = d.client();
    let long = "please tell me about the kitchen and the living room lights ".repeat(6);
    let mut out = Vec::new();
    let mut reused = 0;
    for (i, text) in ["hello", long.as_str(), "turn on the kitchen light", long.as_str()].iter().enumerate() {
        let id = format!("c{i}");
        c.send(&chat(&id, text, json!({"max_tokens": 12, "temperature": 0})));
        let events = c.until_terminal(&id);
        let done = events.last().unwrap();
        assert_eq!(done["event"], "done", "{events:?}");
        reused = done["usage"]["cached_tokens"].as_u64().unwrap_or(0);
        out.push(streamed_text(&events, &id));
    }
    c.send(&json!({"id": "i", "op": "intent", "text": "set the kitchen light to blue and also think about dinner"}));
    let end = c.until_terminal("i").pop().unwrap();
    assert!(matches!(end["event"].as_str(), Some("intent" | "no_intent")), "{end}");
    // The confidence comes from probabilities over a 2,300-token prompt: equal to a few 1e-4
    // (the 4-bit products quantize their inputs, which a last-digit difference can flip).
    let confidence = end["intent"]["confidence"].as_f64().unwrap_or(0.0);
    out.push(format!("{} {} {}", end["event"], end["intent"]["name"], end["slots"]));
    (out, confidence, reused)
}

#[test]
fn the_static_graphs_answer_as_the_export_they_come_from_on_the_cpu() {
    let dir = static_dir(16);
    let (export, export_confidence, _) = answers(&Daemon::start_customized(dir.path(), "backend = \"ort\"", "", |_| {}));
    let d = Daemon::start_customized(dir.path(), "backend = \"static\"", "", |_| {});
    let backend = &d.status()["model"]["backend"];
    assert_eq!(backend["name"], "onnxruntime-static", "{backend}");
    let (got, confidence, reused) = answers(&d);
    assert_eq!(got, export, "greedy answers through the static graphs");
    assert!((confidence - export_confidence).abs() < 0.01, "intent confidence {confidence} against {export_confidence}");
    assert!(reused > 0, "the repeated long chat reuses its prefix");
    let cache = &d.status()["cache"];
    assert!(cache["reused_tokens"].as_u64() > Some(0), "the intent catalog's prefix is reused: {cache}");

    // A prompt beyond the graphs' KV buffer is refused, naming it.
    let mut c = d.client();
    c.send(&chat("big", &"word ".repeat(4200), json!({"max_tokens": 2})));
    let end = c.until_terminal("big").pop().unwrap();
    assert_eq!(end["event"], "error", "{end}");
    assert!(end["message"].as_str().is_some_and(|m| m.contains("4096")), "{end}");
}

/// The daemon's "static graphs ready" log line: how, and the milliseconds it took.
fn readiness(d: &Daemon) -> (String, u64) {
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains("static graphs ready")).unwrap_or_else(|| panic!("no readiness line:\n{log}")).to_string();
    let ms = line.split("ms=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap();
    (line, ms)
}

/// Serves a greedy chat and an intent on the simulated HTP (each step takes a second or more).
fn serve_on_the_htp(d: &Daemon) {
    let mut c = d.client().patience(Duration::from_secs(300));
    c.send(&chat("c", "turn on the kitchen light", json!({"max_tokens": 6, "temperature": 0})));
    let events = c.until_terminal("c");
    assert_eq!(events.last().unwrap()["event"], "done", "{events:?}");
    c.send(&json!({"id": "i", "op": "intent", "text": "set the kitchen light to blue and also think about dinner"}));
    let end = c.until_terminal("i").pop().unwrap();
    assert!(matches!(end["event"].as_str(), Some("intent" | "no_intent")), "{end}");
}

#[test]
fn the_static_graphs_serve_on_the_htp_simulator_and_the_second_start_loads_them_compiled() {
    // Chunks of 64: the simulator takes seconds a run, and the intent catalog is 2,300 tokens.
    let dir = static_dir(64);
    let qnn = plugin("qnn");
    // The first start names the backend; the second leaves it to `auto`, which takes the static
    // graphs because the HTP compiles fixed shapes only.
    let keys = |backend: &str| {
        format!(
            "backend = \"{backend}\"\nstrict_providers = true\nexecution_providers = [\"qnn\", \"cpu\"]\n[[model.ep_library]]\nep = \"qnn\"\npath = {:?}\n",
            qnn.display().to_string()
        )
    };
    let options =
        "[model.provider_options.qnn]\nbackend_type = \"htp\"\nenable_htp_fp16_precision = \"1\"\nhtp_arch = \"73\"\nsoc_model = \"60\"\n";
    // Both starts share a cache directory: the compiled graphs and the saved prefix snapshots.
    let cache = tempfile::tempdir().unwrap();
    // Preparing both graphs for the simulated HTP and the intent catalog's prefill take minutes.
    let start = |backend: &str| {
        Daemon::start_slowed(&[], 5.0, dir.path(), &keys(backend), options, |c| {
            c.env("XDG_CACHE_HOME", cache.path());
        })
    };

    let first = start("static");
    let backend = &first.status()["model"]["backend"];
    assert_eq!((backend["name"].as_str(), backend["execution_provider"].as_str()), (Some("onnxruntime-static"), Some("qnn")), "{backend}");
    let providers = backend["placement"]["providers"].as_array().unwrap();
    let qnn_nodes = providers.iter().find(|p| p["ep"] == "qnn").and_then(|p| p["nodes"].as_u64()).unwrap_or(0);
    let elsewhere: Vec<_> =
        providers.iter().filter(|p| p["ep"] != "qnn").flat_map(|p| p["op_types"].as_object().unwrap().keys().cloned()).collect();
    eprintln!("decode graph: {}", backend["placement"]["summary"]);
    assert!(qnn_nodes > 200 && elsewhere.iter().all(|op| op == "GatherBlockQuantized"), "{}", backend["placement"]);
    let prefill = backend["prefill_placement"]["summary"].as_str().unwrap_or_default().to_string();
    assert!(prefill.starts_with("qnn took "), "the prefill graph's placement: {backend}");
    let out = Command::new(env!("CARGO_BIN_EXE_qwenedge")).args(["doctor", "--json", "--config"]).arg(&first.config).output_in_time();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown = report["placement"]["summary"].as_str().unwrap_or_default();
    assert!(shown.contains("decode graph: qnn took") && shown.contains("prefill graph: qnn took"), "{}", report["placement"]);
    let decode = backend["placement"]["summary"].clone();
    serve_on_the_htp(&first);
    let (line, prepared_ms) = readiness(&first);
    assert!(line.contains("prepared the graphs and saved them compiled"), "{line}");
    drop(first);

    let second = start("auto");
    let (line, loaded_ms) = readiness(&second);
    assert!(line.contains("loaded the compiled graphs"), "{line}");
    let backend = &second.status()["model"]["backend"];
    assert!(backend["chosen"].as_str().is_some_and(|c| c.contains("static graphs")), "{backend}");
    eprintln!("first start: graphs prepared in {prepared_ms} ms; second start: compiled graphs loaded in {loaded_ms} ms");
    assert_eq!(backend["execution_provider"], "qnn");
    // The compiled graphs' placement is the one saved when they were prepared.
    assert_eq!((&backend["placement"]["summary"], backend["prefill_placement"]["summary"].as_str()), (&decode, Some(prefill.as_str())));
    serve_on_the_htp(&second);
}
