//! The soak: mixed traffic over every transport at once — two socket clients (one connection
//! reused, one per request with cancellations), an MQTT client with a persistent session, and
//! through the real client libraries (tests/clients/soak_clients.py) the OpenAI SDK, the Ollama
//! client and Home Assistant's Wyoming turns — with the broker restarted every 60 s and a SIGHUP
//! every 90 s. It checks that every request got exactly one terminal event (none lost, none run
//! twice: the daemon's own counters agree), and that resident memory, file descriptors and
//! threads measured at two quiet points (after the warm-up and at the end) stay flat.
//!
//! `QWENEDGE_SOAK_MINUTES` sets the length (3 in the test run; `tests/soak.sh --minutes 30`).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::daemon::{chat, config_text, Daemon};
use crate::common::mqtt::{free_port, Answers, Broker, Tester, TesterOptions};
use serde_json::{json, Value};

const MODEL: &str = "qwen3.5-soak";

/// Where the MQTT answers come.
const PREFIX: &str = "qwenedge/soak/response/";

/// When traffic flows: a warm-up window, a quiet gap (the baseline is measured in it), the main
/// window, and a quiet end (the last measurement).
#[derive(Clone, Copy)]
struct Plan {
    start: Instant,
    warm: Duration,
    quiet: Duration,
    total: Duration,
}

impl Plan {
    fn new(minutes: f64) -> Self {
        let total = Duration::from_secs_f64(minutes * 60.0);
        let warm = (total / 10).clamp(Duration::from_secs(30), Duration::from_secs(120));
        Self { start: Instant::now(), warm, quiet: Duration::from_secs(15), total }
    }

    fn windows(&self) -> [(Instant, Instant); 2] {
        let s = self.start;
        [(s, s + self.warm), (s + self.warm + self.quiet, s + self.total - self.quiet)]
    }

    /// `at`, or the start of the next window when `at` falls in a quiet gap.
    fn in_traffic(&self, at: Instant) -> Instant {
        let [(_, end0), (start1, _)] = self.windows();
        if at >= end0 && at < start1 {
            start1
        } else {
            at
        }
    }
}

/// Runs `one(n)` while a window is open; returns how many ran.
fn drive(plan: Plan, mut one: impl FnMut(u64)) -> u64 {
    let mut n = 0;
    for (start, end) in plan.windows() {
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
        while Instant::now() < end {
            one(n);
            n += 1;
        }
    }
    n
}

/// The daemon's resident memory (KiB), open file descriptors and threads.
fn sample(d: &Daemon) -> (u64, usize, usize) {
    let pid = d.child.id();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap();
    (d.rss_kb(), fds, threads)
}

/// Socket client A: one connection for every request, chat, completion and intent in turn.
fn socket_reused(d: &Daemon, plan: Plan) -> u64 {
    let mut c = d.client();
    drive(plan, |n| {
        let id = format!("a{n}");
        let request = match n % 3 {
            0 => chat(&id, &format!("hello number {n}"), json!({"max_tokens": 16})),
            1 => json!({"id": id, "op": "complete", "prompt": format!("Number {n} is"), "max_tokens": 16, "seed": n}),
            _ => json!({"id": id, "op": "intent", "text": "turn on the kitchen light"}),
        };
        c.send(&request);
        let events = c.until_terminal(&id);
        assert!(events.iter().all(|e| e["id"] == id.as_str()), "{id}: events of another request: {events:?}");
        let end = events.last().unwrap();
        assert!(end["event"] == "done" || end["event"] == "intent", "{id}: {end}");
    })
}

/// Socket client B: a new connection per request; every fifth is cancelled after its first token.
fn socket_fresh(d: &Daemon, plan: Plan) -> u64 {
    drive(plan, |n| {
        let id = format!("b{n}");
        let mut c = d.client();
        c.send(&chat(&id, "tell me a story", json!({"max_tokens": if n % 5 == 0 { 400 } else { 12 }})));
        if n % 5 == 0 {
            let first = c.recv();
            assert_eq!(first["id"], id.as_str());
            c.send(&json!({"id": id, "op": "cancel"}));
        }
        let events = c.until_terminal(&id);
        let end = events.last().unwrap();
        let cancelled = end["event"] == "error" && end["code"] == "cancelled";
        assert!(end["event"] == "done" || (n % 5 == 0 && cancelled), "{id}: {end}");
        // Nothing after the terminal event: the connection closes clean when dropped.
    })
}

/// The MQTT client: requests in batches of three, each batch answered before the next (across
/// broker restarts); every id's events are kept for the final check.
fn mqtt_client(port: u16, plan: Plan) -> (u64, Answers) {
    let t = Tester::connect_with(port, "soak-client", TesterOptions { persistent: true, ..Default::default() });
    t.wait_online("soak");
    t.subscribe(&format!("{PREFIX}#"));
    let mut answers = Answers::default();
    let mut batch = Vec::new();
    let n = drive(plan, |n| {
        let id = format!("m{n}");
        let request = if n % 4 == 3 {
            json!({"id": id, "op": "intent", "text": "set the living room lamp to 40 percent"})
        } else {
            chat(&id, &format!("mqtt number {n}"), json!({"max_tokens": 12}))
        };
        t.publish("qwenedge/soak/request", request.to_string());
        batch.push(id);
        if batch.len() == 3 {
            t.collect_terminals(PREFIX, &batch, &mut answers, Duration::from_secs(180));
            batch.clear();
        }
    });
    t.collect_terminals(PREFIX, &batch, &mut answers, Duration::from_secs(180));
    t.drain_into(PREFIX, &mut answers, Duration::from_secs(2));
    (n, answers)
}

fn epoch(at: Instant) -> f64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    now + (at.saturating_duration_since(Instant::now())).as_secs_f64()
}

fn join<T>(name: &str, h: JoinHandle<T>, d: &Daemon) -> T {
    h.join().unwrap_or_else(|_| panic!("the {name} client failed (see above); daemon log:\n{}", d.log_text()))
}

#[test]
fn soak_with_broker_restarts_and_reloads_loses_nothing_and_stays_flat() {
    let minutes: f64 = std::env::var("QWENEDGE_SOAK_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(3.0);
    let mut broker = Broker::start();
    let (http, wyoming, port) = (free_port(), free_port(), broker.port);
    let sections = |deadline_ms: u64| {
        format!(
            "[scheduler]\nqueue_capacity = 64\ndefault_deadline_ms = {deadline_ms}\n\
             [mqtt]\nenabled = true\nurl = \"mqtt://127.0.0.1:{port}\"\ndevice_id = \"soak\"\nreconnect_min_ms = 200\nreconnect_max_ms = 2000\n\
             [http]\nenabled = true\nlisten = \"127.0.0.1:{http}\"\nmodel_name = \"{MODEL}\"\n\
             [wyoming]\nenabled = true\nlisten = \"127.0.0.1:{wyoming}\"\n"
        )
    };
    let d = Arc::new(Daemon::start(&sections(300_000)));
    let plan = Plan::new(minutes);
    let [_, (main_start, main_end)] = plan.windows();

    let windows = plan.windows().iter().map(|(s, e)| format!("{:.3}:{:.3}", epoch(*s), epoch(*e))).collect::<Vec<_>>().join(",");
    let mut python = crate::common::clients::command("soak_clients.py")
        .args(["--base-url", &format!("http://127.0.0.1:{http}"), "--model", MODEL, "--wyoming-port", &wyoming.to_string()])
        .args(["--windows", &windows])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let python_out = {
        let mut pipe = python.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut pipe, &mut bytes).map(|_| bytes).unwrap_or_default()
        })
    };
    let a = std::thread::spawn({
        let d = Arc::clone(&d);
        move || socket_reused(&d, plan)
    });
    let b = std::thread::spawn({
        let d = Arc::clone(&d);
        move || socket_fresh(&d, plan)
    });
    let m = std::thread::spawn(move || mqtt_client(port, plan));
    let peaks = Arc::new(Mutex::new((0u64, 0usize, 0usize)));
    let monitor = std::thread::spawn({
        let (d, peaks) = (Arc::clone(&d), Arc::clone(&peaks));
        move || {
            while Instant::now() < main_end {
                let (rss, fds, threads) = sample(&d);
                let mut p = peaks.lock().unwrap();
                *p = (p.0.max(rss), p.1.max(fds), p.2.max(threads));
                drop(p);
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    });

    // The faults: a broker restart every 60 s and a SIGHUP every 90 s, in traffic only.
    let (mut restarts, mut reloads, mut baseline) = (0u32, 0u32, None);
    let mut next_restart = plan.in_traffic(plan.start + Duration::from_secs(60));
    let mut next_reload = plan.in_traffic(plan.start + Duration::from_secs(90));
    loop {
        let now = Instant::now();
        if baseline.is_none() && now >= main_start - Duration::from_secs(1) {
            baseline = Some(sample(&d));
        }
        if now >= main_end {
            break;
        }
        if now >= next_restart {
            broker.restart_gracefully(Duration::from_secs(1));
            restarts += 1;
            next_restart = plan.in_traffic(next_restart + Duration::from_secs(60));
        } else if now >= next_reload {
            reloads += 1;
            std::fs::write(
                &d.config,
                config_text(&crate::common::model_dir("tiny-a", "int4"), &d.socket, &sections(300_000 + reloads as u64)),
            )
            .unwrap();
            d.signal(libc::SIGHUP);
            next_reload = plan.in_traffic(next_reload + Duration::from_secs(90));
        }
        let wake = [next_restart, next_reload, main_end, if baseline.is_none() { main_start - Duration::from_secs(1) } else { main_end }];
        std::thread::sleep(wake.iter().min().unwrap().saturating_duration_since(Instant::now()).min(Duration::from_millis(500)));
    }

    let socket_a = join("socket", a, &d);
    let socket_b = join("socket (per request)", b, &d);
    let (mqtt, answers) = join("MQTT", m, &d);
    // Its last window has ended; what it still has in flight ends within its own timeouts.
    let python_status = crate::common::wait::exit(&mut python, "the soak's Python clients to finish", Duration::from_secs(300));
    let stdout = python_out.join().unwrap();
    let py: Value = serde_json::from_slice(stdout.split(|b| *b == b'\n').rfind(|l| !l.is_empty()).unwrap_or(b"null")).unwrap();
    monitor.join().unwrap();
    // The second measuring point, as quiet as the first: as long after the traffic as the
    // baseline was after the warm-up's (not a wait for anything).
    std::thread::sleep(Duration::from_secs(13));
    let end = sample(&d);

    for n in 0..mqtt {
        let id = format!("m{n}");
        let ends = answers.terminals(&id);
        assert_eq!(ends.len(), 1, "{id}: exactly one terminal event: {ends:?}");
        assert!(ends[0]["event"] == "done" || ends[0]["event"] == "intent", "{id}: {}", ends[0]);
        if ends[0]["event"] == "done" {
            assert_eq!(answers.text(&id), ends[0]["text"].as_str().unwrap(), "{id}: no token lost or repeated");
        }
    }
    assert!(python_status.success() && py["failed"] == 0, "HTTP/Wyoming clients: {py}\ndaemon log:\n{}", d.log_text());
    let counts = &py["counts"];
    let (openai, ollama, turns) =
        (counts["openai"].as_u64().unwrap_or(0), counts["ollama"].as_u64().unwrap_or(0), counts["wyoming"].as_u64().unwrap_or(0));
    let sent = socket_a + socket_b + mqtt + openai + ollama + turns;
    let status = d.status();
    let (done, failed) = (status["requests"]["done"].as_u64().unwrap(), status["requests"]["failed"].as_u64().unwrap());
    let (rss0, fds0, threads0) = baseline.unwrap();
    let (rss1, fds1, threads1) = end;
    let growth = rss1 as f64 / rss0 as f64 - 1.0;
    let figures = json!({
        "minutes": minutes, "requests": sent, "socket": socket_a + socket_b, "mqtt": mqtt, "openai": openai, "ollama": ollama,
        "wyoming": turns, "daemon_done": done, "daemon_failed": failed, "broker_restarts": restarts, "sighups": reloads,
        "mqtt_duplicates_dropped": answers.duplicates, "rss_kb": [rss0, rss1], "rss_growth_pct": (growth * 1e3).round() / 10.0,
        "fds": [fds0, fds1], "threads": [threads0, threads1], "peak": *peaks.lock().unwrap(),
    });
    println!("soak: {figures}");
    assert_eq!(done + failed, sent, "every request ran exactly once: {figures}");
    d.wait_log("configuration reloaded", reloads as usize, Duration::from_secs(30));
    let reloaded = d.log_text().matches("configuration reloaded").count();
    assert_eq!(reloaded, reloads as usize, "every SIGHUP applied: {figures}");
    assert!(restarts >= 1 && reloads >= 1, "the faults happened: {figures}");
    assert!(growth < 0.05, "RSS grew {:.1}% after the warm-up: {figures}", growth * 100.0);
    assert!(fds1 <= fds0 + 2, "file descriptors: {fds0} after the warm-up, {fds1} at the end");
    assert!(threads1 <= threads0 + 1, "threads: {threads0} after the warm-up, {threads1} at the end");
}
