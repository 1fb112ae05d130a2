//! The Wyoming server end to end, through the `wyoming` package Home Assistant uses
//! (tests/clients/check_wyoming.py) against the real binary on a tiny random-weight model:
//! `describe` at once while the engine is busy, the exchange Home Assistant makes for the
//! intent and the handle programs, refusals when critically hot, bad frames of every kind while
//! another client is served, the zeroconf record, and 10 × 10 concurrent turns.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::common::clients;
use crate::common::daemon::{chat, Daemon};
use crate::common::mqtt::free_port;
use crate::common::wait::{Bounded, Wait};
use qwenedge_intent::catalog::SlotKind;
use qwenedge_intent::Catalog;
use serde_json::Value;

/// Runs one check of check_wyoming.py; returns its JSON line.
fn check(name: &str, port: u16, extra: &[&str], d: &Daemon) -> Value {
    let port = port.to_string();
    let mut args = vec![name, "--port", &port];
    args.extend_from_slice(extra);
    clients::run("check_wyoming.py", &args, d)
}

fn start(wyoming: &str, extra: &str) -> (Daemon, u16) {
    let port = free_port();
    let d = Daemon::start(&format!("[wyoming]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n{wyoming}\n{extra}"));
    (d, port)
}

/// Checks an `intent` event against the built-in catalog: a catalog intent, its entities slots
/// of that intent with values of their type.
fn check_intent(catalog: &Catalog, data: &Value) {
    let name = data["name"].as_str().unwrap();
    let def = catalog.intent(name).unwrap_or_else(|| panic!("{name} is not in the catalog"));
    for e in data["entities"].as_array().unwrap() {
        let slot = def.slots.iter().find(|s| s.name == e["name"]).unwrap_or_else(|| panic!("{name}: no slot {e}"));
        let v = &e["value"];
        match &slot.kind {
            SlotKind::Enum { values } => assert!(values.iter().any(|x| v == x.as_str()), "{name}: {e}"),
            SlotKind::Entity { source } => assert!(catalog.entity_values(*source).iter().any(|x| v == *x), "{name}: {e}"),
            SlotKind::Text { max_len } => assert!((1..=*max_len).contains(&v.as_str().unwrap().chars().count()), "{name}: {e}"),
            SlotKind::Number { min, max, .. } => {
                let x = v.as_f64().unwrap_or_else(|| panic!("{name}: {e} is not a number"));
                assert!(x >= *min as f64 && x <= *max as f64, "{name}: {e}");
            }
        }
    }
    for required in def.slots.iter().filter(|s| s.required) {
        assert!(data["entities"].as_array().unwrap().iter().any(|e| e["name"] == required.name.as_str()), "{name}: {required:?}");
    }
}

#[test]
fn describe_is_answered_at_once_while_the_engine_is_busy_or_reloading() {
    let (d, port) = start("programs = [\"intent\", \"handle\"]\nlanguages = [\"en\", \"de\"]", "[scheduler]\nmax_tokens_limit = 100000\n");
    let info = check("describe", port, &[], &d);
    assert_eq!(info["intent"][0]["installed"], true, "{info}");
    assert_eq!(info["intent"][0]["languages"], serde_json::json!(["en", "de"]), "{info}");
    assert_eq!((info["handle"][0]["installed"].as_bool(), info["handle"][0]["streaming"].as_bool()), (Some(true), Some(true)));
    // A generation to the end of the context (seconds) holds the engine thread; describe does
    // not need it: it is answered while that generation still runs (an order of events, not a
    // time). Sent from here, at once, rather than from a Python process that takes a while to
    // start.
    let mut c = d.client();
    c.send(&chat("long", "tell me everything", serde_json::json!({"max_tokens": 50000, "stream": false})));
    let running = |s: &Value| s["running"].as_array().map_or(0, Vec::len);
    d.wait_status("the long generation to start", Duration::from_secs(10), |s| running(s) == 1);
    let (answer, closed) = send_raw(port, b"{\"type\": \"describe\"}\n");
    let after = d.status();
    assert!(!closed && answer.contains("\"type\":\"info\""), "{answer}");
    assert_eq!(running(&after), 1, "describe was answered while the generation ran: {after}");
    // A reload (another thread count: the model is loaded again), once the generation is
    // cancelled by its client leaving: describe is answered during it as well.
    drop(c);
    d.wait_status("the generation to be cancelled by its client leaving", Duration::from_secs(10), |s| running(s) == 0);
    let text = std::fs::read_to_string(&d.config).unwrap().replace("threads = 1\n", "threads = 2\n");
    std::fs::write(&d.config, text).unwrap();
    d.signal(libc::SIGHUP);
    let reloading = check("describe", port, &[], &d);
    d.wait_log("configuration reloaded", 1, Duration::from_secs(30));
    eprintln!("describe through the wyoming package: idle {} ms, reloading {} ms", info["describe_ms"], reloading["describe_ms"]);
}

#[test]
fn the_intent_program_answers_each_transcript_with_a_catalog_intent_or_not_recognized() {
    let (d, port) = start("", "[intents]\nlocal = \"off\"\ntemperature = 1.0\nmin_confidence = 0.0\n");
    let turns = check("turns", port, &["--count", "100"], &d);
    let catalog = Catalog::builtin().unwrap();
    let (mut intents, mut not_recognized) = (0, 0);
    for events in turns.as_array().unwrap() {
        assert_eq!(events.as_array().unwrap().len(), 1, "one answer per transcript: {events}");
        let e = &events[0];
        match e["type"].as_str().unwrap() {
            "intent" => {
                check_intent(&catalog, &e["data"]);
                intents += 1;
            }
            "not-recognized" => not_recognized += 1,
            other => panic!("{other}: {e}"),
        }
    }
    assert_eq!(intents + not_recognized, 100);
    eprintln!("100 transcripts at temperature 1.0: {intents} intents, {not_recognized} not recognized");
    let status = d.status();
    assert!(status["requests"]["done"].as_u64().unwrap() >= 100, "{status}");
}

#[test]
fn the_handle_program_streams_a_short_answer_and_always_ends_with_handled() {
    let (d, port) = start("programs = [\"handle\"]\nhandle_max_tokens = 12", "");
    let turns = check("turns", port, &["--count", "3", "--text", "what is the capital of France"], &d);
    for events in turns.as_array().unwrap() {
        let kinds: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds.first(), Some(&"handled-start"), "{kinds:?}");
        assert_eq!(&kinds[kinds.len() - 2..], ["handled", "handled-stop"], "{kinds:?}");
        let chunks: String = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "handled-chunk")
            .map(|e| e["data"]["text"].as_str().unwrap())
            .collect();
        assert!(kinds.iter().filter(|k| **k == "handled-chunk").count() >= 1, "{kinds:?}");
        let handled = &events[kinds.len() - 2]["data"];
        assert_eq!(handled["text"].as_str().unwrap(), chunks.trim(), "handled carries the whole answer");
    }
}

/// A fake device tree whose thermal zone reads `celsius`.
fn hot_device(dir: &Path, celsius: f64) -> String {
    let put = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put("sys/class/thermal/thermal_zone0/type", "cpu-thermal");
    put("sys/class/thermal/thermal_zone0/temp", &format!("{}\n", (celsius * 1000.0) as i64));
    put("proc/meminfo", "MemTotal:        8000000 kB\nMemAvailable:    6000000 kB\n");
    format!(
        "[budget]\nroot = {:?}\npoll_ms = 50\nthermal_hot_c = 80.0\nthermal_critical_c = 90.0\nmemory_reserve_mb = 0\n",
        dir.display().to_string()
    )
}

#[test]
fn when_critically_hot_both_programs_say_why_instead_of_going_silent() {
    let dev = tempfile::tempdir().unwrap();
    let budget = hot_device(dev.path(), 95.0);
    let critical = |s: &Value| s["budget"]["level"] == "critical";
    let (d, port) = start("programs = [\"handle\"]", &budget);
    d.wait_status("the level to become critical", Duration::from_secs(20), critical);
    let handle = check("turns", port, &["--count", "1"], &d);
    let e = &handle[0][0];
    assert_eq!(e["type"], "not-handled", "{handle}");
    assert!(e["data"]["text"].as_str().unwrap().contains("too hot"), "{e}");
    drop(d);
    // The model's intent path refuses; a command the sentence templates match is still
    // answered (they cost microseconds, not the model's heat).
    let (d, port) = start("", &format!("{budget}[intents]\nlocal = \"off\"\n"));
    d.wait_status("the level to become critical", Duration::from_secs(20), critical);
    let intent = check("turns", port, &["--count", "1"], &d);
    let e = &intent[0][0];
    assert!(e["type"] == "not-recognized" || e["type"] == "error", "{intent}");
    assert!(e["data"]["text"].as_str().unwrap().contains("too hot"), "{e}");
    drop(d);
    let (d, port) = start("", &budget);
    d.wait_status("the level to become critical", Duration::from_secs(20), critical);
    let local = check("turns", port, &["--count", "1", "--text", "turn on the kitchen light"], &d);
    assert_eq!((local[0][0]["type"].as_str(), local[0][0]["data"]["name"].as_str()), (Some("intent"), Some("HassTurnOn")), "{local}");
}

/// Sends `bytes` (a bad frame, then a `describe`) on a new connection and reads what comes back
/// until the server closes the connection (`true`) or answers the `describe` (`false`): events,
/// not a quiet time, end the exchange.
fn send_raw(port: u16, bytes: &[u8]) -> (String, bool) {
    let wait = Wait::new("the server to answer describe or close the connection", Duration::from_secs(10));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        s.set_read_timeout(Some(wait.left().max(Duration::from_millis(1)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Err(e) => wait.fail(format!("{e}; got so far: {}", String::from_utf8_lossy(&got))),
        }
        let text = String::from_utf8_lossy(&got);
        if text.contains("\"type\":\"info\"") {
            return (text.into_owned(), false);
        }
    }
}

#[test]
fn bad_frames_get_an_error_or_a_closed_connection_while_another_client_is_served() {
    let (d, port) = start("max_header_bytes = 1024\nmax_data_bytes = 4096\nmax_payload_bytes = 4096", "");
    let mut other = clients::command("check_wyoming.py");
    other.args(["load", "--port", &port.to_string(), "--clients", "1", "--turns", "10"]);
    let other = std::thread::spawn(move || other.output_within(clients::SCRIPT));
    let describe = b"{\"type\": \"describe\"}\n";
    // (what, bytes, answered with an error, connection closed, still usable afterwards)
    let cases: Vec<(&str, Vec<u8>, bool, bool)> = vec![
        ("a header that is not JSON", b"hello there\n".to_vec(), true, false),
        ("an unknown event type", b"{\"type\": \"audio-chunk\", \"data\": {\"rate\": 16000}}\n".to_vec(), true, false),
        (
            "a payload on an event that has none",
            b"{\"type\": \"transcript\", \"data\": {\"text\": \"hi\"}, \"payload_length\": 3}\nabc".to_vec(),
            true,
            false,
        ),
        ("data that is not a JSON object", b"{\"type\": \"transcript\", \"data_length\": 3}\n[1]".to_vec(), true, false),
        ("data_length over the limit", b"{\"type\": \"transcript\", \"data_length\": 999999}\n".to_vec(), true, true),
        ("payload_length over the limit", b"{\"type\": \"transcript\", \"payload_length\": 999999}\n".to_vec(), true, true),
        ("a header line over the limit", [vec![b'{'; 2000], b"\n".to_vec()].concat(), true, true),
        ("a length that is no byte count", b"{\"type\": \"transcript\", \"data_length\": \"lots\"}\n".to_vec(), true, true),
    ];
    for (what, bytes, error, closed) in cases {
        let mut wire = bytes.clone();
        wire.extend_from_slice(describe);
        let (got, was_closed) = send_raw(port, &wire);
        assert_eq!(got.contains("\"type\":\"error\""), error, "{what}: {got}");
        assert_eq!(was_closed, closed, "{what}: closed {was_closed}: {got}");
        assert_eq!(got.contains("\"type\":\"info\""), !closed, "{what}: the connection goes on unless closed: {got}");
    }
    // A frame cut short: the peer closes mid-frame; nothing is answered.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"{\"type\": \"transcript\", \"data_length\": 50}\n{\"text\": \"turn on").unwrap();
    drop(s);
    let out = other.join().unwrap();
    assert!(out.status.success(), "the other client: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let served: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(served["turns"], 10, "{served}");
    let log = d.log_text();
    assert!(log.contains("bad frame"), "bad frames are logged: {log}");
    assert!(d.status()["state"] == "ready");
}

#[test]
fn ten_connections_of_ten_turns_are_each_answered_exactly_once() {
    let (d, port) = start("programs = [\"intent\", \"handle\"]\nhandle_max_tokens = 8", "");
    let figures = check("load", port, &["--clients", "10", "--turns", "10"], &d);
    assert_eq!(figures["turns"], 100, "{figures}");
    eprintln!("10 x 10 turns: {figures}");
    let status = d.status();
    assert!(status["running"].as_array().unwrap().is_empty(), "{status}");
}

#[test]
fn the_service_is_announced_over_zeroconf_where_multicast_works_here() {
    let port = free_port();
    let name = format!("qwenedge-test-{port}");
    let d = Daemon::start(&format!("[wyoming]\nenabled = true\nlisten = \"0.0.0.0:{port}\"\nzeroconf_name = \"{name}\"\n"));
    let seen = check("zeroconf", port, &["--name", &name, "--expect-port", &port.to_string()], &d);
    if seen["multicast"] == false {
        // This machine cannot see its own mDNS announcements; the record itself is checked by
        // the unit test in daemon/wyoming/src/zeroconf.rs.
        eprintln!("zeroconf: multicast does not work on this machine; the record is covered by the unit test");
        assert!(d.log_text().contains("announced over zeroconf"), "{}", d.log_text());
        return;
    }
    assert_eq!(seen["port"], port, "{seen}");
    eprintln!("zeroconf: {seen}");
}
