//! A panic on the engine thread (injected by the test-only `fault-injection` feature at the
//! step `QWENEDGE_FAULT_PANIC_AT_STEP` names): every open request, running or queued, on the
//! socket and over MQTT, gets a terminal `model_error`, and the daemon exits with a non-zero
//! status so that systemd's `Restart=on-failure` restarts it.

mod common;

use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::model_dir;
use common::mqtt::{mqtt_section, Broker, Tester};
use serde_json::json;

#[test]
fn a_panic_on_the_engine_thread_answers_every_open_request_and_exits_non_zero() {
    let broker = Broker::start();
    let mqtt = mqtt_section(broker.port, "panic", "");
    let mut d = Daemon::start_customized(&model_dir("tiny-a", "int4"), "", &mqtt, |c| {
        c.env("QWENEDGE_FAULT_PANIC_AT_STEP", "400");
    });
    let t = Tester::connect(broker.port, "panic-client");
    t.wait_online("panic");
    t.subscribe("qwenedge/panic/response/#");
    let long = |id: &str| json!({"id": id, "op": "complete", "prompt": "Once upon a time", "max_tokens": 2000});
    let mut c = d.client();
    c.send(&long("running"));
    let until = Instant::now() + Duration::from_secs(10);
    while d.status()["running"].as_array().is_none_or(Vec::is_empty) {
        assert!(Instant::now() < until, "the first request did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    c.send(&long("queued-1"));
    c.send(&json!({"id": "queued-2", "op": "chat", "messages": [{"role": "user", "content": "hi"}], "priority": "background"}));
    t.publish("qwenedge/panic/request", long("over-mqtt").to_string());

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
    let msgs = t.collect(Duration::from_secs(30), |m| m.json()["id"] == "over-mqtt" && m.json()["event"] != "token");
    let end = msgs.last().unwrap().json();
    assert_eq!(end["code"], "model_error", "the MQTT request is answered too: {end}");

    let status = d.wait_exit(Duration::from_secs(30));
    assert!(matches!(status, Some(code) if code != 0), "exit status {status:?}\n{}", d.log_text());
    let log = d.log_text();
    assert!(log.contains("the engine thread panicked"), "{log}");
    assert!(log.contains("injected fault"), "the log names the panic:\n{log}");
    let offline = t.collect(Duration::from_secs(10), |m| m.topic == "qwenedge/panic/status" && m.json()["status"] == "offline");
    assert!(!offline.is_empty(), "the daemon said it is offline on the way out");
}
