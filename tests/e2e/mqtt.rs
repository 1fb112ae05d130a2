//! `qwenedge serve` over MQTT against a real Mosquitto: streamed chat, MQTT 5 response topics
//! with correlation data, `reply_to`, the other ops, duplicate requests, Hermes NLU answers,
//! Home Assistant discovery (and `mqtt-forget`), bad payloads, and the status topic across
//! SIGTERM and SIGKILL.

use std::time::Duration;

use crate::common::daemon::{chat, Daemon};
use crate::common::mqtt::{mqtt_section, run_ok, Answers, Broker, Msg, Tester};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn is_terminal(m: &Msg, id: &str) -> bool {
    let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
    v["id"] == id && v["event"].is_string() && v["event"] != "token"
}

fn request(t: &Tester, device: &str, body: &Value) {
    t.publish(&format!("qwenedge/{device}/request"), body.to_string());
}

#[test]
fn streaming_chat_response_topics_reply_to_and_every_op() {
    let broker = Broker::start();
    let d = Daemon::start(&format!("[scheduler]\nmax_tokens_limit = 100000\n{}", mqtt_section(broker.port, "d1", "")));
    let t = Tester::connect(broker.port, "t1");
    t.wait_online("d1");
    for f in ["qwenedge/d1/response/#", "v5/inbox", "my/inbox"] {
        t.subscribe(f);
    }

    request(&t, "d1", &chat("r1", "Turn on the kitchen lights", json!({"max_tokens": 12})));
    let msgs = t.collect("r1's terminal event", WAIT, |m| is_terminal(m, "r1"));
    let mut answers = Answers::default();
    // The status topic (subscribed to by wait_online) is refreshed as the request runs.
    for m in msgs.iter().filter(|m| m.topic != "qwenedge/d1/status") {
        assert_eq!(m.topic, "qwenedge/d1/response/r1");
        answers.add(m.json());
    }
    let done = answers.terminals("r1")[0].clone();
    assert_eq!((done["event"].as_str(), done["usage"]["completion_tokens"].as_u64()), (Some("done"), Some(12)), "{done}");
    assert!(msgs.len() > 1, "tokens were streamed");
    assert_eq!(answers.text("r1"), done["text"].as_str().unwrap(), "the streamed tokens add up to the answer");

    t.publish_v5("qwenedge/d1/request", json!({"id": "r2", "op": "models"}).to_string(), "v5/inbox", b"\x00corr\xff");
    let m = t.collect("the models answer on the response topic", WAIT, |m| m.topic == "v5/inbox").pop().unwrap();
    assert_eq!(m.json()["event"], "models");
    assert_eq!(m.correlation.as_deref(), Some(&b"\x00corr\xff"[..]), "correlation data is echoed");

    request(&t, "d1", &chat("r3", "hello", json!({"max_tokens": 3, "stream": false, "reply_to": "my/inbox"})));
    let m = t.collect("r3's answer on reply_to", WAIT, |m| m.topic == "my/inbox").pop().unwrap();
    assert_eq!((m.json()["id"].as_str(), m.json()["event"].as_str()), (Some("r3"), Some("done")), "{:?}", m.json());

    request(&t, "d1", &json!({"id": "r4", "op": "status"}));
    let s = t.collect("the status answer", WAIT, |m| m.topic == "qwenedge/d1/response/r4").pop().unwrap().json();
    assert_eq!((s["event"].as_str(), s["state"].as_str()), (Some("status"), Some("ready")), "{s}");

    // A request delivered twice (same id, same reply topic) runs once.
    for _ in 0..2 {
        request(&t, "d1", &chat("dup", "once only", json!({"max_tokens": 3})));
    }
    t.collect("dup's terminal event", WAIT, |m| is_terminal(m, "dup"));
    let late: Vec<Msg> = t.drain(Duration::from_millis(800), |m| m.topic.starts_with("qwenedge/d1/response/"));
    assert!(!late.iter().any(|m| is_terminal(m, "dup")), "the duplicate was not answered again: {late:?}");

    // Cancel over MQTT; an invalid payload with an MQTT 5 response topic still gets its error.
    request(&t, "d1", &chat("long", "tell a long story", json!({"max_tokens": 50000})));
    t.collect("long's first token", WAIT, |m| m.topic == "qwenedge/d1/response/long");
    request(&t, "d1", &json!({"id": "long", "op": "cancel"}));
    let end = t.collect("long's terminal event after cancel", WAIT, |m| is_terminal(m, "long")).pop().unwrap().json();
    assert_eq!((end["event"].as_str(), end["code"].as_str()), (Some("error"), Some("cancelled")), "{end}");
    t.publish_v5("qwenedge/d1/request", "{oops", "v5/inbox", b"c2");
    let e = t.collect("the bad_request answer on the response topic", WAIT, |m| m.topic == "v5/inbox").pop().unwrap();
    assert_eq!((e.json()["code"].as_str(), e.json()["id"].clone()), (Some("bad_request"), Value::Null));
    assert_eq!(e.correlation.as_deref(), Some(&b"c2"[..]));

    let status = d.status();
    assert_eq!(status["requests"]["done"], 3, "r1, r3 and dup ran once each: {status}");
}

#[test]
fn hermes_queries_and_home_assistant_discovery() {
    let broker = Broker::start();
    let extra = "protocol_version = \"3.1.1\"\nhermes = true\ndiscovery = true\n";
    // Nothing reaches full confidence on random weights: every query is "not recognized".
    let mut d = Daemon::start(&format!("[intents]\nlocal = \"off\"\nmin_confidence = 1.0\n{}", mqtt_section(broker.port, "d2", extra)));
    let t = Tester::connect(broker.port, "t2");
    t.wait_online("d2");
    for f in ["hermes/nlu/intentNotRecognized", "hermes/nlu/intentParsed", "hermes/intent/#", "hermes/error/nlu"] {
        t.subscribe(f);
    }

    t.publish(
        "hermes/nlu/query",
        json!({"input": "turn on the kitchen light", "id": "q1", "siteId": "kitchen", "sessionId": "s1", "customData": "cd", "lang": "en"})
            .to_string(),
    );
    let m = t.collect("the answer to q1", WAIT, |m| m.topic.starts_with("hermes/")).pop().unwrap();
    assert_eq!(m.topic, "hermes/nlu/intentNotRecognized");
    assert_eq!(
        m.json(),
        json!({"input": "turn on the kitchen light", "id": "q1", "siteId": "kitchen", "sessionId": "s1", "customData": "cd"})
    );
    t.publish("hermes/nlu/query", json!({"input": "what time is it"}).to_string());
    let m = t.collect("the answer to a query without ids", WAIT, |m| m.topic.starts_with("hermes/")).pop().unwrap();
    assert_eq!(m.json(), json!({"input": "what time is it", "id": null, "siteId": "default", "sessionId": null}));
    t.publish("hermes/nlu/query", json!({"sessionId": "s3", "siteId": "hall", "text": "no input field"}).to_string());
    let m = t.collect("the error for a query without input", WAIT, |m| m.topic.starts_with("hermes/")).pop().unwrap();
    assert_eq!(m.topic, "hermes/error/nlu");
    let e = m.json();
    assert_eq!((e["sessionId"].as_str(), e["siteId"].as_str()), (Some("s3"), Some("hall")));
    assert!(e["error"].as_str().unwrap().contains("input") && e["context"].as_str().unwrap().contains("no input field"), "{e}");

    let ha = Tester::connect(broker.port, "ha");
    ha.subscribe("homeassistant/#");
    ha.subscribe("qwenedge/d2/state");
    let mut configs = std::collections::BTreeMap::new();
    let mut state = None;
    ha.collect("7 discovery configurations and the state", WAIT, |m| {
        if m.topic.ends_with("/config") {
            assert!(m.retain, "configurations are retained");
            configs.insert(m.topic.clone(), m.json());
        } else if m.topic == "qwenedge/d2/state" {
            state = Some(m.json());
        }
        configs.len() == 9 && state.is_some()
    });
    let state = state.unwrap();
    for key in ["state", "model", "queue", "decode_tok_s", "thermal_level", "soc_temp_c", "mem_available_mb", "home_sync", "home_synced_at"]
    {
        assert!(state.get(key).is_some(), "{key} in {state}");
    }
    assert_eq!(state["state"], "ready");
    for (topic, c) in &configs {
        assert!(topic.starts_with("homeassistant/sensor/qwenedge_d2/"), "{topic}");
        for key in
            ["name", "unique_id", "state_topic", "value_template", "availability_topic", "payload_available", "payload_not_available"]
        {
            assert!(c[key].is_string(), "{key} in {c}");
        }
        assert_eq!((c["availability_topic"].as_str(), c["payload_available"].as_str()), (Some("qwenedge/d2/status"), Some("online")));
        let key = c["value_template"].as_str().unwrap().trim_start_matches("{{ value_json.").trim_end_matches(" }}").to_string();
        assert!(state.get(&key).is_some(), "the template reads a key of the state topic: {key}");
        let dev = &c["device"];
        assert_eq!((dev["identifiers"][0].as_str(), dev["manufacturer"].as_str()), (Some("qwenedge_d2"), Some("qwenedge")));
        assert!(dev["model"].is_string() && dev["sw_version"].is_string() && dev["name"].is_string(), "{dev}");
    }

    // Home Assistant restarts and says so: the configurations come again.
    ha.publish("homeassistant/status", "online");
    let mut again = std::collections::BTreeSet::new();
    ha.collect("the 7 configurations again after homeassistant/status", WAIT, |m| {
        if m.topic.ends_with("/config") {
            again.insert(m.topic.clone());
        }
        again.len() == 9
    });

    // mqtt-forget clears them, once the daemon is stopped (a running one would publish its
    // state again every ten seconds).
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(WAIT), Some(0), "{}", d.log_text());
    run_ok(std::process::Command::new(env!("CARGO_BIN_EXE_qwenedge")).args(["mqtt-forget", "--config"]).arg(&d.config));
    let fresh = Tester::connect(broker.port, "ha2");
    fresh.subscribe("homeassistant/#");
    fresh.subscribe("qwenedge/d2/state");
    let left: Vec<Msg> = fresh.drain(Duration::from_millis(500), |_| true);
    assert!(left.is_empty(), "nothing retained after mqtt-forget: {left:?}");
}

#[test]
fn bad_payloads_get_bad_request_and_the_daemon_stays_connected() {
    let broker = Broker::start();
    let d = Daemon::start(&mqtt_section(broker.port, "d3", "protocol_version = 4\nmax_payload_bytes = 4096\n"));
    let t = Tester::connect(broker.port, "t3");
    t.wait_online("d3");
    t.subscribe("qwenedge/d3/response/#");
    t.subscribe("box/#");
    let cases: Vec<(String, &str, &str)> = vec![
        (json!({"id": "big", "op": "complete", "prompt": "x".repeat(20_000)}).to_string(), "qwenedge/d3/response/big", "max_payload_bytes"),
        (json!({"id": "t", "op": "complete", "prompt": "x", "stream": "yes"}).to_string(), "qwenedge/d3/response/t", "invalid type"),
        (json!({"id": "w", "op": "status", "reply_to": 5}).to_string(), "qwenedge/d3/response/w", "reply_to"),
        (json!({"id": "o", "op": "sing", "reply_to": "box/o"}).to_string(), "box/o", "op"),
        (json!({"id": "m", "op": "complete", "prompt": "x", "max_tokens": 999_999}).to_string(), "qwenedge/d3/response/m", "max_tokens"),
        (
            json!({"id": "f", "op": "chat", "messages": [{"role": "user", "content": "x"}], "colour": 1}).to_string(),
            "qwenedge/d3/response/f",
            "colour",
        ),
    ];
    for unanswerable in ["{not json", "[1,2,3]", "{\"op\":\"status\"}"] {
        t.publish("qwenedge/d3/request", unanswerable);
    }
    t.publish("qwenedge/d3/request", b"\xff\xfe".to_vec());
    for (payload, topic, needle) in cases {
        t.publish("qwenedge/d3/request", payload);
        let m = t.collect(&format!("the error on {topic}"), WAIT, |m| m.topic == topic).pop().unwrap();
        let e = m.json();
        assert_eq!((e["event"].as_str(), e["code"].as_str()), (Some("error"), Some("bad_request")), "{e}");
        assert!(e["message"].as_str().unwrap().contains(needle), "{needle}: {e}");
    }
    request(&t, "d3", &chat("fine", "still there?", json!({"max_tokens": 3})));
    let end = t.collect("fine's terminal event", WAIT, |m| is_terminal(m, "fine")).pop().unwrap().json();
    assert_eq!(end["event"], "done");
    let log = d.log_text();
    assert_eq!(log.matches("connected to the broker").count(), 1, "one connection for everything:\n{log}");
    assert!(!log.contains("no connection to the broker"), "{log}");
    assert!(log.matches("bad request").count() >= 10, "every bad payload is logged:\n{log}");
}

#[test]
fn sigterm_delivers_the_last_events_then_offline_and_sigkill_leaves_the_will() {
    let broker = Broker::start();
    let t = Tester::connect(broker.port, "t4");
    let extra = "[scheduler]\nmax_tokens_limit = 100000\n[service]\nshutdown_grace_ms = 300\n";
    let mut d = Daemon::start(&format!("{extra}{}", mqtt_section(broker.port, "d4", "")));
    t.wait_online("d4");
    t.subscribe("qwenedge/d4/response/#");
    request(&t, "d4", &chat("run", "long", json!({"max_tokens": 50000})));
    t.collect("run's first token", WAIT, |m| m.topic == "qwenedge/d4/response/run");
    d.signal(libc::SIGTERM);
    let end = t.collect("run's terminal event after SIGTERM", WAIT, |m| is_terminal(m, "run")).pop().unwrap().json();
    assert_eq!(end["code"], "shutting_down", "{end}");
    t.collect("d4 offline", WAIT, |m| m.topic == "qwenedge/d4/status" && m.json()["status"] == "offline");
    assert_eq!(d.wait_exit(WAIT), Some(0), "{}", d.log_text());
    assert!(d.log_text().contains("everything delivered; disconnecting"), "{}", d.log_text());

    let d5 = Daemon::start(&mqtt_section(broker.port, "d5", "protocol_version = \"3.1.1\"\n"));
    t.wait_online("d5");
    d5.signal(libc::SIGKILL);
    let will = t.collect("d5's last will", WAIT, |m| m.topic == "qwenedge/d5/status" && m.json()["status"] == "offline").pop().unwrap();
    assert_eq!(will.json(), json!({"status": "offline", "device": "d5"}));
}

#[test]
fn home_assistant_sensors_show_what_the_budget_governor_sees() {
    // A fake device with two thermal zones: the governor watches the cooler one
    // (`budget.thermal_zone`), so the hottest zone must not reach Home Assistant.
    let root = tempfile::tempdir().unwrap();
    let put = |rel: &str, text: &str| {
        let p = root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
    put("sys/class/thermal/thermal_zone0/temp", "45000\n");
    put("sys/class/thermal/thermal_zone1/type", "gpu-thermal\n");
    put("sys/class/thermal/thermal_zone1/temp", "61500\n");
    put("proc/meminfo", "MemTotal:        8000000 kB\nMemAvailable:    6000000 kB\n");
    let broker = Broker::start();
    let budget = format!("[budget]\nroot = {:?}\nthermal_zone = \"cpu-thermal\"\npoll_ms = 50\n", root.path().display().to_string());
    let d = Daemon::start(&format!("{budget}{}", mqtt_section(broker.port, "d6", "discovery = true\n")));
    let status = d.wait_status("the governor's first reading", WAIT, |s| s["budget"]["temperature_c"].is_number());
    assert_eq!(status["budget"]["temperature_c"], 45.0, "{status}");

    let ha = Tester::connect(broker.port, "ha6");
    ha.subscribe("qwenedge/d6/state");
    let mut state = Value::Null;
    ha.collect("a state message with a temperature", WAIT, |m| {
        state = m.json();
        state["soc_temp_c"].is_number()
    });
    let status = d.status();
    assert_eq!(state["soc_temp_c"], status["budget"]["temperature_c"], "the sensor is the governor's zone: {state} vs {status}");
    let mem = status["budget"]["memory_available_mb"].as_f64().expect("memory in status");
    assert_eq!(state["mem_available_mb"].as_f64(), Some((mem * 10.0).round() / 10.0), "{state} vs {status}");
    assert_eq!(state["thermal_level"], status["budget"]["level"], "{state} vs {status}");
}
