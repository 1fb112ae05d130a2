//! The engine thread failing, by the test-only `fault-injection` feature. A panic (once the file
//! `QWENEDGE_FAULT_PANIC_FILE` names exists): every open request, running or queued, on the
//! socket and over MQTT, gets a terminal `model_error`, and the daemon exits with a non-zero
//! status so that systemd's `Restart=on-failure` restarts it. A hang (while the file
//! `QWENEDGE_FAULT_HOLD_FILE` names exists the engine thread waits): a test waiting on the
//! daemon fails saying what it waited for, how long, and the daemon's last log lines, rather
//! than a bare timeout.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use crate::common::daemon::Daemon;
use crate::common::model_dir;
use crate::common::mqtt::{mqtt_section, Broker, Tester};
use serde_json::json;

#[test]
fn a_panic_on_the_engine_thread_answers_every_open_request_and_exits_non_zero() {
    let broker = Broker::start();
    let flags = tempfile::tempdir().unwrap();
    let (hold, panic_file) = (flags.path().join("hold"), flags.path().join("panic"));
    let mqtt = mqtt_section(broker.port, "panic", "");
    let mut d = Daemon::start_customized(&model_dir("tiny-a", "int4"), "", &mqtt, |c| {
        c.env("QWENEDGE_FAULT_HOLD_FILE", &hold).env("QWENEDGE_FAULT_PANIC_FILE", &panic_file);
    });
    let t = Tester::connect(broker.port, "panic-client");
    t.wait_online("panic");
    t.subscribe("qwenedge/panic/response/#");
    let long = |id: &str| json!({"id": id, "op": "complete", "prompt": "Once upon a time", "max_tokens": 2000});
    // The first request is held at its first step while the others are queued; then the engine
    // thread panics at that step.
    std::fs::write(&hold, b"").unwrap();
    let mut c = d.client();
    c.send(&long("running"));
    d.wait_log("injected fault: the engine thread holds here", 1, Duration::from_secs(10));
    c.send(&long("queued-1"));
    c.send(&json!({"id": "queued-2", "op": "chat", "messages": [{"role": "user", "content": "hi"}], "priority": "background"}));
    t.publish("qwenedge/panic/request", long("over-mqtt").to_string());
    d.wait_status("two interactive requests and a background one queued", Duration::from_secs(20), |s| {
        s["queue"]["interactive"] == 2 && s["queue"]["background"] == 1
    });
    std::fs::write(&panic_file, b"").unwrap();
    std::fs::remove_file(&hold).unwrap();

    let mut ends = std::collections::BTreeMap::new();
    while ends.len() < 3 {
        let Some(e) = c.try_recv() else { break };
        if e["event"] != "token" {
            ends.insert(e["id"].as_str().unwrap().to_string(), e);
        }
    }
    for id in ["running", "queued-1", "queued-2"] {
        let e = ends.get(id).unwrap_or_else(|| panic!("{id} got no terminal event: {ends:?}\n{}", d.log_text()));
        assert_eq!((&e["event"], &e["code"]), (&json!("error"), &json!("model_error")), "{id}: {e}");
    }
    let msgs = t.collect("the MQTT request's terminal event", Duration::from_secs(30), |m| {
        m.json()["id"] == "over-mqtt" && m.json()["event"] != "token"
    });
    let end = msgs.last().unwrap().json();
    assert_eq!(end["code"], "model_error", "the MQTT request is answered too: {end}");

    let status = d.wait_exit(Duration::from_secs(30));
    assert!(matches!(status, Some(code) if code != 0), "exit status {status:?}\n{}", d.log_text());
    let log = d.log_text();
    assert!(log.contains("the engine thread panicked"), "{log}");
    assert!(log.contains("injected fault"), "the log names the panic:\n{log}");
    let offline = t.collect("the offline status on the way out", Duration::from_secs(10), |m| {
        m.topic == "qwenedge/panic/status" && m.json()["status"] == "offline"
    });
    assert!(!offline.is_empty(), "the daemon said it is offline on the way out");
}

#[test]
fn a_hung_daemon_fails_the_waiting_test_with_what_it_waited_for_and_the_log() {
    let flags = tempfile::tempdir().unwrap();
    let hold = flags.path().join("hold");
    let d = Daemon::start_customized(&model_dir("tiny-a", "int4"), "", "", |c| {
        c.env("QWENEDGE_FAULT_HOLD_FILE", &hold);
    });
    d.settle();
    std::fs::write(&hold, b"").unwrap();
    // A short wait: the engine thread holds at its next step for good, so no answer comes.
    let mut c = d.client().patience(Duration::from_secs(2));
    c.send(&json!({"id": "stuck", "op": "complete", "prompt": "Once upon a time", "max_tokens": 8}));
    let failure = std::panic::catch_unwind(AssertUnwindSafe(|| c.until_terminal("stuck"))).expect_err("a hung daemon answered");
    let message = failure.downcast_ref::<String>().cloned().unwrap_or_default();
    for needle in
        ["timed out waiting", "for the terminal event of request \"stuck\" (after 0 events)", "allowed", "QWENEDGE_TEST_TIME_SCALE"]
    {
        assert!(message.contains(needle), "{needle:?} missing from the failure:\n{message}");
    }
    assert!(message.contains(&format!("--- daemon log {}", d.log.display())), "the daemon's log is shown:\n{message}");
    let last = d.log_text().lines().find(|l| l.contains("injected fault: the engine thread holds here")).map(str::to_string);
    let last = last.unwrap_or_else(|| panic!("the engine thread never reached the fault:\n{}", d.log_text()));
    assert!(message.contains(&last), "the log's last lines, the fault among them:\n{message}");
}
