//! The HTTP APIs end to end, through the real client libraries (tests/clients/check_http.py:
//! the OpenAI SDK, the Ollama client at Home Assistant's pin, jsonschema, prometheus_client's
//! parser) against the real binary on a tiny model; plus what needs the daemon's side: start-up
//! refusals, bearer tokens that leave the counters alone, health.

use std::process::Command;
use std::time::Duration;

use crate::common::clients;
use crate::common::daemon::Daemon;
use crate::common::mqtt::free_port;
use crate::common::wait::{Bounded, Wait};
use serde_json::Value;

const MODEL: &str = "qwen3.5-tiny";

/// One HTTP/1.1 request with `Connection: close`: the status and the JSON body (`null` when it
/// is not JSON).
fn request(base: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let wait = Wait::new(format!("the answer to {method} {path}"), Duration::from_secs(30));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait.left())).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap_or_else(|e| wait.fail(format!("{e}; got so far: {raw:?}")));
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, serde_json::from_str(rest.trim()).unwrap_or(Value::Null))
}

fn http_section(port: u16, extra: &str) -> String {
    format!("[http]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nmodel_name = \"{MODEL}\"\n{extra}\n")
}

fn start(extra_http: &str) -> (Daemon, String) {
    let port = free_port();
    let d = Daemon::start(&http_section(port, extra_http));
    (d, format!("http://127.0.0.1:{port}"))
}

/// Runs one check of check_http.py; returns its figures.
fn check(name: &str, base: &str, extra: &[&str], d: &Daemon) -> Value {
    let mut args = vec![name, "--base-url", base, "--model", MODEL];
    args.extend_from_slice(extra);
    let figures = clients::run("check_http.py", &args, d);
    eprintln!("{name}: {figures}");
    figures
}

#[test]
fn the_openai_client_gets_chats_tool_calls_structured_answers_and_metrics() {
    let (d, base) = start("");
    let figures = check("openai", &base, &["--runs", "50"], &d);
    assert_eq!(figures["tool_calls_required"], "50/50");
    assert_eq!(figures["tool_calls_named"], "50/50");
    assert_eq!(figures["json_schema"], "50/50");
}

#[test]
fn home_assistants_ollama_calls_work_and_later_turns_and_conversations_reuse_the_prefix() {
    let (d, base) = start("");
    let figures = check("ollama", &base, &[], &d);
    assert!(figures["turn2_reused"].as_f64().unwrap() >= 0.9, "{figures}");
    assert!(figures["new_conversation_reused"].as_f64().unwrap() >= 0.9, "{figures}");
    assert_eq!(d.status()["model_loaded"], true, "the last request loaded the model again");
}

#[test]
fn sixteen_streaming_clients_are_all_answered_and_a_disconnect_is_a_cancellation() {
    let (d, base) = start("");
    let figures = check("load", &base, &[], &d);
    assert_eq!(figures["complete"].as_u64().unwrap() + figures["refused"].as_u64().unwrap(), 80);
    let failed_before = d.status()["requests"]["failed"].as_u64().unwrap();
    check("disconnect", &base, &[], &d);
    let status = d.status();
    assert_eq!(status["requests"]["failed"].as_u64().unwrap(), failed_before + 1, "{status}");
    assert!(status["running"].as_array().unwrap().is_empty(), "nothing keeps running: {status}");
}

#[test]
fn bearer_tokens_are_required_and_refused_requests_move_no_counter() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# one token per line\ns3cret-token\n").unwrap();
    let (d, base) = start(&format!("api_key_file = {:?}", keys.display().to_string()));
    check("auth", &base, &["--api-key", "s3cret-token"], &d);
    let status = d.status();
    assert_eq!((status["requests"]["done"].as_u64(), status["requests"]["failed"].as_u64()), (Some(1), Some(0)), "{status}");
    let (code, body) = request(&base, "GET", "/health", None);
    assert_eq!((code, body["status"].as_str()), (200, Some("ok")), "health needs no token");
}

#[test]
fn listening_beyond_loopback_without_a_key_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("q.sock");
    let config = dir.path().join("config.toml");
    let port = free_port();
    let text = crate::common::daemon::config_text(&crate::common::model_dir("tiny-a", "int4"), &socket, "[http]\nenabled = true\n");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qwenedge"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("QWENEDGE__HTTP__LISTEN", format!("0.0.0.0:{port}"))
        .output_in_time();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("http.api_key_file") && stderr.contains(&format!("0.0.0.0:{port}")), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(!socket.exists(), "nothing was started");
}

#[test]
fn health_answers_while_serving_and_after_an_idle_unload_and_errors_keep_each_apis_shape() {
    let (d, base) = start("max_body_bytes = 65536");
    let get = |path: &str| request(&base, "GET", path, None);
    assert_eq!(get("/health"), (200, serde_json::json!({"status": "ok", "model_loaded": true})));
    let unload = serde_json::json!({"model": MODEL, "messages": [], "keep_alive": 0});
    let (_, unloaded) = request(&base, "POST", "/api/chat", Some(&unload));
    assert_eq!(unloaded["done_reason"], "unload", "{unloaded}");
    d.wait_status("the model to be unloaded after keep_alive 0", Duration::from_secs(30), |s| s["model_loaded"] == false);
    let (code, body) = get("/health");
    assert_eq!((code, &body["status"], &body["model_loaded"]), (200, &"ok".into(), &false.into()), "{body}");
    let big = serde_json::json!({"model": MODEL, "prompt": "a".repeat(70_000)});
    let (code, body) = request(&base, "POST", "/api/generate", Some(&big));
    assert_eq!(code, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("http.max_body_bytes"), "{body}");
    let (code, body) = request(&base, "POST", "/v1/completions", Some(&big));
    assert_eq!(code, 413, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("http.max_body_bytes"), "{body}");
    let (code, body) = get("/v1/nonexistent");
    assert_eq!(code, 404, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("/v1/nonexistent"));
}
