//! ONNX Runtime failing a run in the middle of a generation (made to by the test-only
//! `fault-injection` feature: while the file `QWENEDGE_FAULT_ORT_ERROR_FILE` names exists, the
//! next run is started with ONNX Runtime's terminate flag set, and fails inside the runtime).
//! The request that was running gets `model_error` naming the runtime's message; the daemon
//! goes on, and the next requests give exactly what they gave before the fault — no broken
//! state is cached or reused. A failure while the catalog is being cached leaves intents
//! answered, and the catalog is cached when the warm-up is tried again.

use std::path::Path;
use std::time::Duration;

use crate::common::daemon::{streamed_text, Daemon};
use crate::common::wait;
use serde_json::{json, Value};

fn ask(d: &Daemon, request: Value) -> (Value, String) {
    let id = request["id"].as_str().unwrap().to_string();
    let mut c = d.client();
    c.send(&request);
    let events = c.until_terminal(&id);
    (events.last().unwrap().clone(), streamed_text(&events, &id))
}

fn story(id: &str, max_tokens: usize) -> Value {
    json!({"id": id, "op": "complete", "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0})
}

fn hello(id: &str) -> Value {
    let messages = json!([{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "hello"}]);
    json!({"id": id, "op": "chat", "messages": messages, "max_tokens": 16, "temperature": 0})
}

fn fail_next_run(flag: &Path) {
    std::fs::write(flag, b"").unwrap();
}

#[test]
fn an_onnx_runtime_error_mid_generation_is_a_model_error_and_the_daemon_goes_on() {
    let flags = tempfile::tempdir().unwrap();
    let flag = flags.path().join("fail");
    let d = Daemon::start_customized(&crate::common::model_dir("tiny-a", "int4"), "", "[scheduler]\nmax_tokens_limit = 100000\n", |c| {
        c.env("QWENEDGE_FAULT_ORT_ERROR_FILE", &flag);
    });
    // The catalog's warm-up first, so that each fault meets the request it is meant for.
    d.wait_status("the catalog to be cached", Duration::from_secs(120), |s| s["cache"]["pinned"] == 1);
    let (end, story_before) = ask(&d, story("story-before", 40));
    assert_eq!(end["event"], "done", "{end}");
    let (_, hello_before) = ask(&d, hello("hello-before"));

    // A generation longer than the test; after a few tokens the runtime fails one run.
    let mut c = d.client();
    c.send(&story("long", 50000));
    let mut tokens = 0;
    while tokens < 5 {
        if c.recv()["event"] == "token" {
            tokens += 1;
        }
    }
    fail_next_run(&flag);
    let end = c.until_terminal("long").pop().unwrap();
    assert_eq!((&end["event"], &end["code"]), (&json!("error"), &json!("model_error")), "{end}");
    let message = end["message"].as_str().unwrap();
    assert!(message.contains("inference failed") && message.to_lowercase().contains("terminate"), "{message}");
    assert!(!flag.exists(), "the fault was used");

    // The same answers as before; the conversation's cached prefix is still good.
    assert_eq!(ask(&d, story("story-after", 40)).1, story_before);
    assert_eq!(ask(&d, hello("hello-after")).1, hello_before);
    // A failure in a request's first run (its prefill) is the request's alone too.
    fail_next_run(&flag);
    let (end, _) = ask(&d, hello("hello-failed"));
    assert_eq!(end["code"], "model_error", "{end}\n{}", d.log_text());
    assert_eq!(ask(&d, hello("hello-again")).1, hello_before);
    let status = d.status();
    assert_eq!(status["state"], "ready", "{status}");
    assert!(status["running"].as_array().unwrap().is_empty(), "{status}");
}

#[test]
fn an_onnx_runtime_error_while_caching_the_catalog_leaves_intents_answered() {
    let flags = tempfile::tempdir().unwrap();
    let flag = flags.path().join("fail");
    fail_next_run(&flag);
    let d = Daemon::start_customized(&crate::common::model_dir("tiny-a", "int4"), "", "", |c| {
        c.env("QWENEDGE_FAULT_ORT_ERROR_FILE", &flag);
    });
    wait::until("the catalog warm-up to meet the fault", Duration::from_secs(30), || !flag.exists());
    let (end, _) = ask(&d, json!({"id": "kitchen", "op": "intent", "text": "turn on the kitchen light"}));
    assert_eq!(end["event"], "intent", "{end}\n{}", d.log_text());
    let log = d.log_text();
    assert!(log.contains("inference failed") && log.contains("trying again when idle"), "the failure is logged:\n{log}");
    // Tried again when idle: the catalog ends up cached all the same.
    d.wait_status("the catalog to be cached when the warm-up is tried again", Duration::from_secs(60), |s| s["cache"]["pinned"] == 1);
}
