//! Clients that stop reading: nothing between the engine and a client grows without bound. A
//! socket client that sends long requests and never reads has them cancelled once it leaves
//! `socket.max_unread_bytes` unread; an MQTT broker connection that stalls has the MQTT
//! requests cancelled once the outbox passes `mqtt.max_outbox_bytes`. Meanwhile the daemon's
//! memory stays put and other clients are answered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::daemon::Daemon;
use crate::common::mqtt::{mqtt_section, Broker, Tester};
use crate::common::wait::Wait;
use serde_json::{json, Value};

/// Most the daemon's resident memory may grow while a client does not read.
const RSS_GROWTH_KB: u64 = 20 * 1024;

/// How long the daemon may take to cancel the requests of a client that does not read (before
/// scaling): on an idle machine it takes a few seconds.
const CANCELLED: Duration = Duration::from_secs(60);

fn long_request(id: &str) -> Value {
    json!({"id": id, "op": "complete", "prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0.8, "seed": 1})
}

/// Sends short requests from another connection until the daemon is idle (the reader's
/// requests all cancelled), each answered `done`; returns how many and the slowest answer.
/// Fails naming `what` when the daemon is not idle within [`CANCELLED`] (scaled).
fn answered_meanwhile(d: &Daemon, what: &str) -> (usize, Duration) {
    let wait = Wait::new(what, CANCELLED);
    let mut c = d.client();
    let (mut n, mut slowest) = (0, Duration::ZERO);
    while !idle(d) {
        if wait.expired() {
            wait.fail(format!("status: {}", d.status()));
        }
        let id = format!("fast{n}");
        let began = Instant::now();
        c.send(&json!({"id": id, "op": "complete", "prompt": "Hello", "max_tokens": 4, "stream": false}));
        let end = c.until_terminal(&id).pop().unwrap();
        assert_eq!(end["event"], "done", "{end}");
        slowest = slowest.max(began.elapsed());
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    (n, slowest)
}

/// Runs one long request to its end, reading everything: the runtime's buffers for long
/// sequences exist before memory is compared.
fn warm_up(d: &Daemon) {
    d.settle();
    let mut c = d.client();
    c.send(&long_request("warm-up"));
    let end = c.until_terminal("warm-up").pop().unwrap();
    assert_eq!(end["event"], "done", "{end}");
}

/// Whether nothing is queued or running.
fn idle(d: &Daemon) -> bool {
    idle_in(&d.status())
}

fn idle_in(s: &Value) -> bool {
    s["running"].as_array().is_some_and(Vec::is_empty) && s["queue"]["interactive"] == 0 && s["queue"]["background"] == 0
}

#[test]
fn a_socket_client_that_does_not_read_is_cancelled_and_the_others_are_served() {
    let d = Daemon::start("max_unread_bytes = 16384\n\n[scheduler]\nqueue_capacity = 32\n");
    warm_up(&d);
    let rss_before = d.rss_kb();
    let mut slow = UnixStream::connect(&d.socket).unwrap();
    let ended = |s: &Value| s["requests"]["done"].as_u64().unwrap_or(0) + s["requests"]["failed"].as_u64().unwrap_or(0);
    let before = ended(&d.status());
    let lines: String = (0..20).map(|i| format!("{}\n", long_request(&format!("slow{i}")))).collect();
    slow.write_all(lines.as_bytes()).unwrap();
    // The requests are in (running, queued, or already cancelled) before idleness means anything.
    d.wait_status("the reader's requests to arrive", Duration::from_secs(20), |s| !idle_in(s) || ended(s) > before);
    let began = Instant::now();
    let (fast, slowest) = answered_meanwhile(&d, "the requests of the client that does not read to be cancelled");
    let took = began.elapsed();
    let grown = d.rss_kb().saturating_sub(rss_before);
    eprintln!("socket client not reading: cancelled after {took:?}, RSS grew {grown} KiB, {fast} other requests answered meanwhile");
    assert!(grown < RSS_GROWTH_KB, "the daemon grew by {grown} KiB while the client did not read");
    assert!(fast > 0, "another client was answered meanwhile (slowest {slowest:?})");
    let log = d.log_text();
    assert_eq!(log.matches("a client is not reading its events").count(), 1, "one log line:\n{log}");

    // The client reads at last: every request has exactly one terminal event, the ones past
    // the bound `cancelled` naming it; and the connection serves again.
    let reading = Wait::new("the slow reader's 20 terminal events", Duration::from_secs(30));
    slow.set_read_timeout(Some(reading.left())).unwrap();
    let mut reader = BufReader::new(slow.try_clone().unwrap());
    let mut ends = std::collections::BTreeMap::new();
    while ends.len() < 20 {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap_or_else(|e| reading.fail(format!("{} of 20 ({e})", ends.len())));
        assert!(n > 0, "the connection stays open");
        let e: Value = serde_json::from_str(&line).unwrap();
        if e["event"] != "token" {
            assert!(ends.insert(e["id"].as_str().unwrap().to_string(), e.clone()).is_none(), "one terminal event per request: {e}");
        }
    }
    let cancelled: Vec<&Value> = ends.values().filter(|e| e["code"] == "cancelled").collect();
    assert!(ends.values().all(|e| e["event"] == "done" || e["code"] == "cancelled"), "{ends:?}");
    assert!(cancelled.len() >= 15, "{} of 20 cancelled", cancelled.len());
    assert!(cancelled.iter().all(|e| e["message"].as_str().unwrap().contains("socket.max_unread_bytes")), "{cancelled:?}");
    slow.write_all(format!("{}\n", json!({"id": "again", "op": "complete", "prompt": "Hi", "max_tokens": 3})).as_bytes()).unwrap();
    let again = Wait::new("the answer to the caught-up client's new request", Duration::from_secs(30));
    slow.set_read_timeout(Some(again.left())).unwrap();
    let end = loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap_or_else(|e| again.fail(e));
        let e: Value = serde_json::from_str(&line).unwrap();
        if e["id"] == "again" && e["event"] != "token" {
            break e;
        }
    };
    assert_eq!(end["event"], "done", "a client that caught up is served again: {end}");
}

/// Most the daemon's own memory (`RssAnon`: heap and stacks, not the mapped model's pages) may
/// stay above where it was once the requests of a client that read nothing have ended (measured:
/// nothing; the memory they took is handed back as soon as the engine is idle).
const SETTLED_GROWTH_KB: u64 = 8 * 1024;

#[test]
fn twelve_unread_2000_token_completions_leave_the_memory_where_it_was_and_hold_no_one_up() {
    let d = Daemon::start("");
    d.wait_status("the intent catalog's prefix to be cached", Duration::from_secs(60), |s| s["cache"]["pinned"].as_u64() >= Some(1));
    // One request read to its end: the engine is idle after a request, as it will be after the
    // reader's, and has handed back what start-up left.
    let mut c = d.client();
    c.send(&json!({"id": "first", "op": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}));
    assert_eq!(c.until_terminal("first").pop().unwrap()["event"], "done");
    d.wait_status("the first request to end", Duration::from_secs(10), idle_in);
    std::thread::sleep(Duration::from_millis(500));
    let (anon_before, rss_before) = (d.anon_kb(), d.rss_kb());
    let mut slow = UnixStream::connect(&d.socket).unwrap();
    let lines: String = (0..12).map(|i| format!("{}\n", long_request(&format!("slow{i}")))).collect();
    slow.write_all(lines.as_bytes()).unwrap();
    d.wait_status("the reader's requests to start", Duration::from_secs(20), |s| !idle_in(s));
    let began = Instant::now();
    c.send(&json!({"id": "voice", "op": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}));
    let end = c.until_terminal("voice").pop().unwrap();
    let answered = began.elapsed();
    assert_eq!(end["event"], "done", "{end}");
    let mut peak = 0;
    let wait = Wait::new("the unread requests to end", CANCELLED);
    while !idle(&d) {
        peak = peak.max(d.anon_kb().saturating_sub(anon_before));
        wait.tick(|| format!("status: {}", d.status()));
    }
    // The engine hands the memory back as soon as it is idle.
    let settled = Wait::new("the daemon's memory to settle", Duration::from_secs(10));
    let grown = loop {
        let grown = d.anon_kb().saturating_sub(anon_before);
        if grown < SETTLED_GROWTH_KB || settled.expired() {
            break grown;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mapped = d.rss_kb().saturating_sub(rss_before) as i64 - grown as i64;
    eprintln!(
        "twelve unread 2,000-token completions: a 4-token chat answered in {answered:?}; own memory {} MiB before, +{peak} KiB at most \
         while they ran, +{grown} KiB once idle (mapped files' pages: {mapped:+} KiB)",
        anon_before / 1024
    );
    assert!(grown < SETTLED_GROWTH_KB, "the daemon kept {grown} KiB more than before the client that did not read");
}

/// A TCP proxy that can stop moving bytes in both directions (a stalled link: nothing is
/// refused, nothing arrives).
struct StallProxy {
    port: u16,
    stalled: Arc<AtomicBool>,
}

impl StallProxy {
    fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stalled);
        std::thread::spawn(move || loop {
            if flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let Ok((inbound, _)) = listener.accept() else { return };
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else { continue };
            for (from, to) in [(inbound.try_clone().unwrap(), outbound.try_clone().unwrap()), (outbound, inbound)] {
                let flag = Arc::clone(&flag);
                std::thread::spawn(move || pump(from, to, &flag));
            }
        });
        Self { port, stalled }
    }

    fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, stalled: &AtomicBool) {
    let mut buf = vec![0u8; 16 * 1024];
    from.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    loop {
        while stalled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                while stalled.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn a_stalled_broker_connection_cancels_the_mqtt_requests_with_the_outbox_bounded() {
    let broker = Broker::start();
    let proxy = StallProxy::start(broker.port);
    let mqtt = mqtt_section(proxy.port, "stall", "max_outbox_bytes = 16384\nkeep_alive_s = 5\n");
    let d = Daemon::start(&format!("[scheduler]\nqueue_capacity = 32\n\n{mqtt}"));
    let t = Tester::connect(broker.port, "stall-client");
    t.wait_online("stall");
    warm_up(&d);
    t.subscribe("qwenedge/stall/response/#");
    for i in 0..20 {
        t.publish("qwenedge/stall/request", long_request(&format!("m{i}")).to_string());
    }
    d.wait_status("the 20 MQTT requests to arrive (one running, 19 queued)", Duration::from_secs(20), |s| {
        s["queue"]["interactive"].as_u64().unwrap_or(0) >= 19
    });
    let rss_before = d.rss_kb();
    proxy.stall(true);
    let began = Instant::now();
    let (fast, _) = answered_meanwhile(&d, "the MQTT requests to be cancelled once the outbox is full");
    let took = began.elapsed();
    let grown = d.rss_kb().saturating_sub(rss_before);
    eprintln!("stalled broker link: cancelled after {took:?}, RSS grew {grown} KiB, {fast} socket requests answered meanwhile");
    assert!(grown < RSS_GROWTH_KB, "the daemon grew by {grown} KiB while the broker took nothing");
    assert!(fast > 0, "socket clients were answered meanwhile");
    let log = d.log_text();
    assert!(log.contains("the outbox is full; cancelling the running MQTT requests"), "{log}");
    let status = d.status();
    assert!(status["requests"]["failed"].as_u64().unwrap() >= 15, "{status}");

    // The link comes back: what the outbox kept is delivered, the newest first kept, and the
    // cancelled answers name the bound.
    proxy.stall(false);
    let msgs = t.collect("a cancelled MQTT answer once the link is back", Duration::from_secs(60), |m| m.json()["code"] == "cancelled");
    let cancelled: Vec<Value> = msgs.iter().map(|m| m.json()).filter(|v| v["code"] == "cancelled").collect();
    assert!(cancelled.iter().all(|v| v["message"].as_str().unwrap().contains("mqtt.max_outbox_bytes")), "{cancelled:?}");
}
