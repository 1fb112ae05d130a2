//! The `qwenedge` binary end to end: `generate` streams exactly the greedy text on stdout and
//! nothing else; `bench` prints a table on stderr and one JSON line on stdout; errors are one
//! clear line and a failure status.

use std::process::Command;

use crate::common::wait::Bounded;
use qwenedge_engine::bpe::Bpe;

fn qwenedge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qwenedge"))
}

#[test]
fn generate_streams_the_greedy_text() {
    let dir = crate::common::model_dir("tiny-a", "fp32");
    let p = &crate::common::reference("tiny-a").prompts[0];
    let out = qwenedge()
        .args(["generate", "--threads", "2", "--max-tokens", "32", "--model"])
        .arg(&dir)
        .args(["--prompt", &p.text])
        .output_in_time();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bpe = Bpe::from_json(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
    let eos = [248046, 248044];
    let tokens: Vec<u32> = p.genai_greedy.fp32.iter().copied().take_while(|t| !eos.contains(t)).collect();
    let bytes: Vec<u8> = tokens.iter().flat_map(|&t| bpe.piece(t).to_vec()).collect();
    let expected = String::from_utf8_lossy(&bytes).into_owned() + "\n";
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

#[test]
fn generate_with_chat_template_runs() {
    let out = qwenedge()
        .args(["generate", "--chat", "--max-tokens", "4", "--model"])
        .arg(crate::common::model_dir("tiny-b", "int4"))
        .args(["--prompt", "Turn on the kitchen lights"])
        .output_in_time();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.stdout.is_empty());
}

#[test]
fn bench_prints_one_json_line() {
    let out = qwenedge()
        .args(["bench", "--threads", "2", "--prompt-tokens", "16", "--new-tokens", "8", "--runs", "1", "--model"])
        .arg(crate::common::model_dir("tiny-a", "int4"))
        .output_in_time();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in ["prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb"] {
        assert!(json[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {json}");
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("decode"));
}

#[test]
fn bench_sharing_measures_a_chat_beside_long_work_through_the_daemon() {
    let out = qwenedge()
        .args(["bench", "--sharing", "--threads", "1", "--runs", "1", "--model"])
        .arg(crate::common::model_dir("tiny-a", "int4-long"))
        .output_in_time();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["idle_ttft_ms", "during_prefill_ttft_ms", "during_decode_ttft_ms", "chunk_ms", "token_ms"] {
        assert!(json[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {json}");
    }
    assert!(json["prompt_tokens"].as_f64().is_some_and(|n| n >= 4096.0), "{json}");
}

#[test]
fn errors_are_one_line_with_failure_status() {
    let out = qwenedge().args(["generate", "--model", "/nonexistent", "--prompt", "x"]).output_in_time();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("qwenedge: model directory /nonexistent"), "{stderr}");

    let out = qwenedge()
        .args(["generate", "--onnxruntime", "/nonexistent/libonnxruntime.so", "--prompt", "x", "--model"])
        .arg(crate::common::model_dir("tiny-a", "int4"))
        .output_in_time();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("/nonexistent/libonnxruntime.so") && stderr.contains("no such file"), "{stderr}");
}
