//! Thermal and memory budgets end to end: the daemon reads a fake /sys and /proc tree that the
//! tests script, and its admission, pacing, caps, model switching and unloading follow.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::daemon::{chat, Daemon};
use crate::common::wait::Bounded;
use serde_json::{json, Value};

/// A fake device: one thermal zone, memory and a cgroup, all writable by the test.
struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    fn new() -> Self {
        let d = Device { dir: tempfile::tempdir().unwrap() };
        d.put("/sys/class/thermal/thermal_zone0/type", "cpu-thermal");
        d.temp(45.0);
        d.put("/proc/meminfo", "MemTotal:        8000000 kB\nMemAvailable:    6000000 kB\n");
        d.put("/proc/self/cgroup", "0::/qwenedge.service\n");
        d.put("/sys/fs/cgroup/qwenedge.service/memory.max", "max\n");
        d.put("/sys/fs/cgroup/qwenedge.service/memory.current", "0\n");
        d.put("/proc/pressure/memory", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
        d
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn put(&self, rel: &str, text: &str) {
        crate::common::put(self.root(), rel, text);
    }

    fn temp(&self, c: f64) {
        self.put("/sys/class/thermal/thermal_zone0/temp", &format!("{}\n", (c * 1000.0) as i64));
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[budget]\nroot = {:?}\npoll_ms = 50\nthermal_warm_c = 70.0\nthermal_hot_c = 80.0\nthermal_critical_c = 90.0\nthermal_hysteresis_c = 3.0\nmemory_reserve_mb = 0\n{extra}",
            self.root().display().to_string()
        )
    }
}

/// How long the monitor (polling every 50 ms) may take to see a change (before scaling).
const READING: Duration = Duration::from_secs(20);

/// Waits until `status.budget` satisfies `ok`; returns it.
fn wait_budget(d: &Daemon, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    d.wait_status(what, READING, |s| ok(&s["budget"]))["budget"].clone()
}

/// Waits until `status.budget.level` is `level`.
fn wait_level(d: &Daemon, level: &str) {
    wait_budget(d, &format!("the thermal level to become {level}"), |b| b["level"] == level);
}

fn ask(d: &Daemon, id: &str, extra: Value) -> Value {
    let mut c = d.client();
    c.send(&chat(id, "turn on the lights", extra));
    c.until_terminal(id).pop().unwrap()
}

#[test]
fn a_temperature_ramp_moves_through_every_level_and_back() {
    let dev = Device::new();
    let d = Daemon::start(&dev.config("hot_max_tokens = 5\n"));
    wait_level(&d, "normal");
    // The level reads "normal" before the monitor's first reading is in; wait for it.
    wait_budget(&d, "the monitor's first reading (45 °C)", |b| b["temperature_c"] == 45.0);
    let mut current = "normal";
    for (t, level) in [
        (72.0, "warm"),
        (82.0, "hot"),
        (92.0, "critical"),
        (88.0, "critical"),
        (86.5, "hot"),
        (78.0, "hot"),
        (76.5, "warm"),
        (67.5, "warm"),
        (66.5, "normal"),
    ] {
        dev.temp(t);
        if level != current {
            wait_level(&d, level);
            current = level;
        } else {
            // Inside the hysteresis band the level holds: once the monitor has read the new
            // temperature (its reading and its level are one report), the level is unchanged.
            let seen = wait_budget(&d, &format!("the monitor to read {t} °C"), |b| b["temperature_c"] == t);
            assert_eq!(seen["level"], level, "at {t} °C: {seen}");
        }
    }
}

#[test]
fn hot_refuses_background_and_caps_answers_critical_stops_everything() {
    let dev = Device::new();
    let d = Daemon::start(&dev.config("hot_max_tokens = 5\n[scheduler]\nmax_tokens_limit = 100000\n"));
    dev.temp(82.0);
    wait_level(&d, "hot");
    let e = ask(&d, "bg", json!({"priority": "background", "max_tokens": 10}));
    assert_eq!((e["event"].as_str(), e["code"].as_str()), (Some("error"), Some("thermal")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("82.0 °C"), "{e}");
    let done = ask(&d, "fg", json!({"max_tokens": 50}));
    assert_eq!(done["event"], "done");
    assert!(done["usage"]["completion_tokens"].as_u64().unwrap() <= 5, "capped while hot: {done}");

    dev.temp(60.0);
    wait_level(&d, "normal");
    let mut c = d.client();
    c.send(&chat("long", "story", json!({"max_tokens": 50000})));
    assert_eq!(c.recv()["event"], "token");
    dev.temp(95.0);
    let end = c.until_terminal("long").pop().unwrap();
    assert_eq!((end["event"].as_str(), end["code"].as_str()), (Some("error"), Some("thermal")), "{end}");
    let e = ask(&d, "new", json!({"max_tokens": 2}));
    assert_eq!(e["code"], "thermal", "{e}");
}

/// A 400-token generation: (decode tokens/s, ms paused for the duty cycle).
fn decode_rate(d: &Daemon, id: &str) -> (f64, f64) {
    let done = ask(d, id, json!({"max_tokens": 400, "stream": false}));
    assert_eq!(done["usage"]["completion_tokens"], 400, "{done}");
    (done["timings"]["decode_tok_s"].as_f64().unwrap(), done["timings"]["paced_ms"].as_f64().unwrap())
}

#[test]
fn warm_paces_decoding_to_the_duty_cycle() {
    let dev = Device::new();
    let d = Daemon::start_with_model(&crate::common::model_dir("tiny-b", "fp32"), &dev.config("warm_duty_cycle = 0.5\n"));
    decode_rate(&d, "warmup");
    let (normal, normal_paused) = decode_rate(&d, "normal");
    assert_eq!(normal_paused, 0.0, "no pauses while cool");
    dev.temp(72.0);
    wait_level(&d, "warm");
    let (warm, paused) = decode_rate(&d, "warm");
    // The decode rate against the rate of the same steps without the pauses: this is the
    // duty cycle whatever else the machine is doing (the steps themselves may be slower or
    // faster than in the cool run on a shared machine).
    let wall_ms = 399.0 / warm * 1e3;
    let duty = (wall_ms - paused) / wall_ms;
    assert!((0.5 * 0.85..=0.5 * 1.15).contains(&duty), "warm: {warm:.0} tok/s, paused {paused:.0} of {wall_ms:.0} ms: duty {duty:.3}");
    // Not compared with the cool run's rate: that was measured at another moment, under whatever
    // else the machine was doing then.
    eprintln!("decode: {normal:.0} tok/s cool, {warm:.0} tok/s warm at duty {duty:.3}");
}

#[test]
fn background_work_waits_while_warm() {
    let dev = Device::new();
    let d = Daemon::start(&dev.config(""));
    dev.temp(72.0);
    wait_level(&d, "warm");
    let mut c = d.client();
    c.send(&chat("bg", "later", json!({"priority": "background", "max_tokens": 3})));
    c.send(&chat("fg", "now", json!({"max_tokens": 3})));
    let events = c.until_terminal("fg");
    assert!(events.iter().all(|e| e["id"] == "fg"), "background did not run while warm: {events:?}");
    assert_eq!(d.status()["queue"]["background"], 1);
    dev.temp(50.0);
    assert_eq!(c.until_terminal("bg").pop().unwrap()["event"], "done");
}

fn serve_output(model: &Path, extra: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, crate::common::daemon::config_text(model, &dir.path().join("q.sock"), extra)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_qwenedge")).args(["serve", "--config"]).arg(&config).output_in_time()
}

#[test]
fn a_model_larger_than_the_cgroup_limit_is_refused_with_the_numbers() {
    let dev = Device::new();
    dev.put("/sys/fs/cgroup/qwenedge.service/memory.max", &format!("{}\n", 40u64 << 20));
    dev.put("/sys/fs/cgroup/qwenedge.service/memory.current", &format!("{}\n", 10u64 << 20));
    let small: PathBuf = crate::common::model_dir("tiny-a", "int4");
    let out =
        serve_output(&crate::common::model_dir("tiny-b", "fp32"), &dev.config(&format!("hot_model = {:?}\n", small.display().to_string())));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let line = err.lines().last().unwrap();
    for needle in ["needs about", "weights", "KV cache", "30 MiB free", "memory.max 40 MiB", "memory.current 10 MiB", "budget.hot_model"] {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
}

#[test]
fn requests_whose_state_does_not_fit_get_memory_and_pressure_refuses_background() {
    let dev = Device::new();
    let d = Daemon::start(&dev.config("[scheduler]\nmax_tokens_limit = 4000\n"));
    dev.put("/proc/meminfo", "MemTotal:        8000000 kB\nMemAvailable:    1024 kB\n");
    wait_budget(&d, "the monitor to read 1 MiB of room", |b| b["memory_room_mb"] == 1.0);
    let e = ask(&d, "big", json!({"max_tokens": 4000}));
    assert_eq!(e["code"], "memory", "{e}");
    assert!(e["message"].as_str().unwrap().contains("MiB"), "{e}");
    assert_eq!(ask(&d, "small", json!({"max_tokens": 2}))["event"], "done");

    dev.put("/proc/meminfo", "MemTotal:        8000000 kB\nMemAvailable:    6000000 kB\n");
    dev.put("/proc/pressure/memory", "some avg10=45.00 avg60=10.00 avg300=1.00 total=99\n");
    wait_budget(&d, "the monitor to read the memory pressure", |b| b["under_pressure"] == true);
    assert_eq!(ask(&d, "bg", json!({"priority": "background", "max_tokens": 2}))["code"], "memory");
    assert_eq!(ask(&d, "fg", json!({"max_tokens": 2}))["event"], "done");
}

#[test]
fn an_idle_model_is_unloaded_and_reloaded_on_demand() {
    let dev = Device::new();
    let d = Daemon::start(&dev.config("idle_unload_s = 1\n"));
    d.wait_status("the idle model to be unloaded (idle_unload_s = 1)", Duration::from_secs(30), |s| s["model_loaded"] == false);
    let done = ask(&d, "wake", json!({"max_tokens": 3}));
    assert_eq!(done["event"], "done", "{done}");
    // The reload is reported (the model may be unloaded again a second later).
    assert!(done["timings"]["load_ms"].as_f64().unwrap() > 0.0, "the reload is reported: {done}");
}

#[test]
fn a_smaller_model_is_used_while_hot() {
    let dev = Device::new();
    let hot = crate::common::model_dir("tiny-b", "int4");
    let d = Daemon::start(&dev.config(&format!("hot_model = {:?}\n", hot.display().to_string())));
    let path = |d: &Daemon| d.status()["model"]["path"].as_str().unwrap().to_string();
    assert!(path(&d).ends_with("tiny-a/int4"));
    dev.temp(83.0);
    wait_level(&d, "hot");
    let on = |end: &'static str| move |s: &Value| s["model"]["path"].as_str().is_some_and(|p| p.ends_with(end));
    d.wait_status("the switch to the hot model", Duration::from_secs(30), on("tiny-b/int4"));
    assert_eq!(ask(&d, "hot", json!({"max_tokens": 2}))["event"], "done");
    dev.temp(50.0);
    wait_level(&d, "normal");
    d.wait_status("the switch back to the configured model", Duration::from_secs(30), on("tiny-a/int4"));
}
