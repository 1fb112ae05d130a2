//! `qwenedge serve` end to end over a real Unix socket: streaming, interleaving, cancellation,
//! disconnects, backpressure, priorities, deadlines, signals, peer checks and bad input.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::common::daemon::{chat, streamed_text, Client, Daemon};
use crate::common::wait::Bounded;
use serde_json::{json, Value};

fn terminal<'a>(events: &'a [Value], id: &str) -> &'a Value {
    events.iter().rev().find(|e| e["id"] == id && e["event"] != "token").expect("terminal event")
}

#[test]
fn streaming_chat_ends_with_done_matching_the_tokens() {
    let d = Daemon::start("");
    let mut c = d.client();
    c.send(&chat("r1", "Turn on the kitchen lights", json!({"max_tokens": 12})));
    let events = c.until_terminal("r1");
    let done = terminal(&events, "r1");
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(done["finish_reason"], "length");
    assert_eq!(done["usage"]["completion_tokens"], 12);
    assert!(events.len() > 1, "tokens were streamed");
    assert_eq!(streamed_text(&events, "r1"), done["text"].as_str().unwrap());
    for key in ["queue_ms", "prefill_ms", "ttft_ms", "decode_tok_s", "total_ms"] {
        assert!(done["timings"][key].as_f64().is_some(), "timings.{key} in {done}");
    }
    // Same connection, non-streaming, complete op.
    c.send(&json!({"id": "r2", "op": "complete", "prompt": "Once upon a time", "max_tokens": 5, "stream": false}));
    let events = c.until_terminal("r2");
    assert_eq!(events.len(), 1, "no token events without streaming: {events:?}");
    assert_eq!(events[0]["usage"]["completion_tokens"], 5);
}

#[test]
fn two_clients_and_interleaved_requests_get_their_own_events() {
    let d = Daemon::start("");
    let mut a = d.client();
    let mut b = d.client();
    a.send(&chat("a1", "first", json!({"max_tokens": 8})));
    b.send(&chat("b1", "second", json!({"max_tokens": 8})));
    a.send(&chat("a2", "third", json!({"max_tokens": 8})));
    let mut a_events = a.until_terminal("a1");
    if !a_events.iter().any(|e| e["id"] == "a2" && e["event"] != "token") {
        a_events.extend(a.until_terminal("a2"));
    }
    let b_events = b.until_terminal("b1");
    assert!(b_events.iter().all(|e| e["id"] == "b1"), "{b_events:?}");
    assert!(a_events.iter().all(|e| e["id"] == "a1" || e["id"] == "a2"));
    for id in ["a1", "a2"] {
        assert_eq!(terminal(&a_events, id)["event"], "done");
    }
    assert_eq!(terminal(&b_events, "b1")["event"], "done");
}

#[test]
fn cancel_stops_a_generation_mid_stream() {
    let d = Daemon::start("[scheduler]\nmax_tokens_limit = 100000\n");
    let mut c = d.client();
    c.send(&chat("long", "tell a long story", json!({"max_tokens": 50000})));
    let first = c.recv();
    assert_eq!(first["event"], "token", "{first}");
    c.send(&json!({"id": "long", "op": "cancel"}));
    let events = c.until_terminal("long");
    let end = terminal(&events, "long");
    assert_eq!(end["event"], "error");
    assert_eq!(end["code"], "cancelled");
    // Cancelling it again is harmless; cancelling an unknown id is a bad request.
    c.send(&json!({"id": "long", "op": "cancel"}));
    c.send(&json!({"id": "nope", "op": "cancel"}));
    let e = c.recv();
    assert_eq!((e["id"].as_str(), e["code"].as_str()), (Some("nope"), Some("bad_request")), "{e}");
}

#[test]
fn a_client_that_disconnects_cancels_its_requests() {
    let d = Daemon::start("[scheduler]\nmax_tokens_limit = 100000\n");
    {
        let mut c = d.client();
        c.send(&chat("gone", "tell a long story", json!({"max_tokens": 50000})));
        assert_eq!(c.recv()["event"], "token");
    }
    let ended = |s: &Value| s["requests"]["done"].as_u64().unwrap() + s["requests"]["failed"].as_u64().unwrap() == 1;
    let s = d.wait_status("the abandoned request to end", Duration::from_secs(30), ended);
    assert_eq!(s["requests"]["failed"], 1, "the request was cancelled, not completed: {s}");
    assert_eq!(s["running"], json!([]));
    let mut c = d.client();
    c.send(&chat("next", "hi", json!({"max_tokens": 3})));
    assert_eq!(terminal(&c.until_terminal("next"), "next")["event"], "done");
}

#[test]
fn a_full_queue_answers_overloaded_at_once() {
    let d = Daemon::start("[scheduler]\nqueue_capacity = 2\nmax_tokens_limit = 100000\n");
    let mut c = d.client();
    c.send(&chat("run", "long", json!({"max_tokens": 50000})));
    assert_eq!(c.recv()["event"], "token");
    for id in ["q1", "q2", "q3"] {
        c.send(&chat(id, "wait", json!({"max_tokens": 2})));
    }
    let refused = loop {
        let e = c.recv();
        if e["event"] == "error" {
            break e;
        }
    };
    assert_eq!((refused["id"].as_str(), refused["code"].as_str()), (Some("q3"), Some("overloaded")), "{refused}");
    c.send(&json!({"id": "run", "op": "cancel"}));
    let mut ends = Vec::new();
    while ends.len() < 3 {
        let e = c.recv();
        if e["event"] != "token" {
            ends.push((e["id"].as_str().unwrap().to_string(), e["event"].as_str().unwrap().to_string()));
        }
    }
    ends.sort();
    assert_eq!(ends, vec![("q1".into(), "done".into()), ("q2".into(), "done".into()), ("run".into(), "error".into())]);
}

#[test]
fn an_interactive_request_overtakes_a_running_background_one() {
    let d = Daemon::start("");
    let mut c = d.client();
    // Long enough (seconds) that it is still running when the interactive request, sent at its
    // first token, arrives.
    c.send(&chat("bg", "summarise the day", json!({"max_tokens": 2000, "priority": "background"})));
    let first = c.recv();
    assert_eq!((first["id"].as_str(), first["event"].as_str()), (Some("bg"), Some("token")));
    c.send(&chat("fg", "what time is it", json!({"max_tokens": 5})));
    let mut events = vec![first];
    events.extend(c.until_terminal("fg"));
    events.extend(c.until_terminal("bg"));
    let pos = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred).unwrap();
    let fg_done = pos(&|e| e["id"] == "fg" && e["event"] == "done");
    let bg_done = pos(&|e| e["id"] == "bg" && e["event"] == "done");
    assert!(fg_done < bg_done, "interactive finished first");
    let bg_after = events[fg_done..].iter().filter(|e| e["id"] == "bg" && e["event"] == "token").count();
    assert!(bg_after > 0, "background resumed after the interactive request");
    assert_eq!(events[bg_done]["usage"]["completion_tokens"], 2000, "background lost nothing: {}", events[bg_done]);
    assert_eq!(streamed_text(&events, "bg"), events[bg_done]["text"].as_str().unwrap());
}

#[test]
fn deadlines_expire_running_and_queued_requests() {
    let d = Daemon::start("[scheduler]\nmax_tokens_limit = 100000\n");
    let mut c = d.client();
    // One write: "late" is queued behind "slow" however long this thread pauses.
    let both = format!(
        "{}\n{}\n",
        chat("slow", "long", json!({"max_tokens": 50000, "deadline_ms": 300})),
        chat("late", "queued", json!({"max_tokens": 2, "deadline_ms": 100}))
    );
    c.send_raw(both.as_bytes());
    let mut events = c.until_terminal("slow");
    if !events.iter().any(|e| e["id"] == "late" && e["event"] != "token") {
        events.extend(c.until_terminal("late"));
    }
    assert_eq!(terminal(&events, "slow")["code"], "timeout");
    assert_eq!(terminal(&events, "late")["code"], "timeout");
}

#[test]
fn sigterm_drains_answers_shutting_down_and_removes_the_socket() {
    let mut d = Daemon::start("[scheduler]\nmax_tokens_limit = 100000\n[service]\nshutdown_grace_ms = 300\n");
    let mut c = d.client();
    c.send(&chat("run", "long", json!({"max_tokens": 50000})));
    assert_eq!(c.recv()["event"], "token");
    c.send(&chat("queued", "wait", json!({"max_tokens": 2})));
    d.wait_status("the second request to be queued", Duration::from_secs(10), |s| s["queue"]["interactive"] == 1);
    d.signal(libc::SIGTERM);
    let mut events = c.until_terminal("queued");
    if !events.iter().any(|e| e["id"] == "run" && e["event"] != "token") {
        events.extend(c.until_terminal("run"));
    }
    assert_eq!(terminal(&events, "queued")["code"], "shutting_down");
    assert_eq!(terminal(&events, "run")["code"], "shutting_down");
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0), "{}", d.log_text());
    assert!(!d.socket.exists(), "socket file removed");
}

#[test]
fn sighup_reloads_the_configuration_and_swaps_the_model() {
    let d = Daemon::start("");
    assert!(d.status()["model"]["path"].as_str().unwrap().ends_with("tiny-a/int4"));
    let model_b = crate::common::model_dir("tiny-b", "int4");
    std::fs::write(&d.config, crate::common::daemon::config_text(&model_b, &d.socket, "[scheduler]\nqueue_capacity = 5\n")).unwrap();
    let mut c = d.client();
    d.signal(libc::SIGHUP);
    c.send(&chat("during", "hello", json!({"max_tokens": 3})));
    assert_eq!(terminal(&c.until_terminal("during"), "during")["event"], "done");
    let s = d.wait_status("the model swapped to tiny-b", Duration::from_secs(30), |s| {
        s["model"]["path"].as_str().unwrap().ends_with("tiny-b/int4")
    });
    assert_eq!(s["queue"]["capacity"], 5);
    // An invalid configuration is refused and the daemon keeps serving.
    let named = d.log_text().matches("model.path").count();
    std::fs::write(&d.config, "[model]\npath = \"/nonexistent\"\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("model.path", named + 1, Duration::from_secs(30));
    c.send(&chat("after", "hello", json!({"max_tokens": 3})));
    assert_eq!(terminal(&c.until_terminal("after"), "after")["event"], "done");
    assert!(d.status()["model"]["path"].as_str().unwrap().ends_with("tiny-b/int4"), "the refused reload kept the model");
}

#[test]
fn a_peer_outside_the_allow_list_is_refused() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test runs a client as another user and needs root");
    let d = Daemon::start("mode = \"0666\"\nallowed_uids = [0]\n");
    std::fs::set_permissions(d.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwenedge"))
        .args(["ask", "--socket"])
        .arg(&d.socket)
        .arg("hello")
        .uid(65534)
        .gid(65534)
        .output_in_time();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("forbidden"), "{stderr}");
    // Root (allowed) still gets answers.
    let mut c = d.client();
    c.send(&chat("ok", "hi", json!({"max_tokens": 2})));
    assert_eq!(terminal(&c.until_terminal("ok"), "ok")["event"], "done");
}

#[test]
fn bad_input_gets_bad_request_and_the_connection_keeps_working() {
    let d = Daemon::start("max_request_bytes = 2048\n");
    let mut c = d.client();
    let cases: Vec<(Vec<u8>, Option<&str>, &str)> = vec![
        (format!("{{\"id\":\"big\",\"op\":\"complete\",\"prompt\":\"{}\"}}\n", "x".repeat(5000)).into_bytes(), None, "max_request_bytes"),
        (b"{not json\n".to_vec(), None, "invalid JSON"),
        (b"{\"id\":\"u\",\"op\":\"complete\",\"prompt\":\"\xff\xfe\"}\n".to_vec(), None, "UTF-8"),
        (
            b"{\"id\":\"f\",\"op\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"colour\":1}\n".to_vec(),
            Some("f"),
            "colour",
        ),
        (b"{\"id\":\"o\",\"op\":\"sing\"}\n".to_vec(), Some("o"), "op"),
        (b"{\"id\":\"t\",\"op\":\"complete\",\"prompt\":\"x\",\"temperature\":-1}\n".to_vec(), Some("t"), "temperature"),
        (b"{\"id\":\"m\",\"op\":\"complete\",\"prompt\":\"x\",\"max_tokens\":999999}\n".to_vec(), Some("m"), "max_tokens"),
        (b"{\"op\":\"status\"}\n".to_vec(), None, "id"),
        (b"[1,2,3]\n".to_vec(), None, "object"),
    ];
    for (bytes, id, needle) in cases {
        c.send_raw(&bytes);
        let e = c.recv();
        assert_eq!(e["event"], "error", "{e}");
        assert_eq!(e["code"], "bad_request", "{e}");
        assert_eq!(e["id"].as_str(), id, "{e}");
        assert!(e["message"].as_str().unwrap().contains(needle), "{needle}: {e}");
    }
    c.send(&chat("fine", "still there?", json!({"max_tokens": 3})));
    assert_eq!(terminal(&c.until_terminal("fine"), "fine")["event"], "done");
    c.send(&json!({"id": "m", "op": "models"}));
    let models = c.recv();
    assert_eq!(models["event"], "models");
    assert_eq!(models["models"][0]["vocab_size"], 248320);
}

#[test]
fn load_test_every_request_gets_exactly_one_terminal_event() {
    let d = Daemon::start("[scheduler]\nqueue_capacity = 64\n");
    let mut warm = d.client();
    for i in 0..3 {
        let id = format!("warm{i}");
        warm.send(&chat(&id, "warm up", json!({"max_tokens": 4})));
        warm.until_terminal(&id);
    }
    d.settle();
    let before = d.rss_kb();
    let socket = d.socket.clone();
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                // 640 requests share one engine thread: an answer may wait for a whole queue.
                let mut client = Client::connect(&socket).patience(Duration::from_secs(120));
                let mut terminals = std::collections::HashMap::new();
                for r in 0..20 {
                    let id = format!("c{c}r{r}");
                    client.send(&chat(&id, &format!("request {r} from client {c}"), json!({"max_tokens": 4})));
                    for e in client.until_terminal(&id) {
                        if e["event"] != "token" {
                            *terminals.entry(e["id"].as_str().unwrap().to_string()).or_insert(0) += 1;
                            assert!(e["event"] == "done" || e["code"] == "overloaded", "{e}");
                        }
                    }
                }
                terminals
            })
        })
        .collect();
    let mut all = std::collections::HashMap::new();
    for t in clients {
        all.extend(t.join().unwrap());
    }
    assert_eq!(all.len(), 32 * 20, "every request answered");
    assert!(all.values().all(|&n| n == 1), "exactly one terminal event each");
    let s = d.status();
    assert_eq!(s["requests"]["done"].as_u64().unwrap() + s["requests"]["failed"].as_u64().unwrap(), 4 + 640);
    let after = d.rss_kb();
    let growth = after as f64 / before as f64;
    assert!(growth <= 1.10, "RSS grew from {before} KiB to {after} KiB ({growth:.3}x)");
}

#[test]
fn a_huge_single_letter_prompt_is_refused_by_its_length_while_another_client_is_answered() {
    let d = Daemon::start("");
    let mut big = d.client();
    // Just under the 256 KiB line limit: one pre-token the old merge loop took minutes over.
    big.send(&json!({"id": "big", "op": "complete", "prompt": "a".repeat(255 * 1024)}));
    let mut small = d.client();
    small.send(&chat("small", "hi", json!({"max_tokens": 4})));
    let answered = small.until_terminal("small").pop().unwrap();
    assert_eq!(answered["event"], "done", "{answered}");
    let refused = big.until_terminal("big").pop().unwrap();
    assert_eq!(refused["code"], "bad_request", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("tokens") && message.contains("context holds"), "the limit is named: {message}");
}
