//! Execution providers with fallback and `strict`, and `qwenedge doctor` against a recorded
//! /sys and /proc tree.

use crate::common::put;

use std::path::Path;
use std::process::Command;

use crate::common::daemon::{chat, START};
use crate::common::wait::{self, Bounded};
use serde_json::{json, Value};

#[test]
fn unavailable_providers_are_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("q.sock");
    let config = dir.path().join("config.toml");
    let text = crate::common::daemon::config_text(&crate::common::model_dir("tiny-a", "int4"), &socket, "")
        .replace("threads = 1\n", "threads = 1\nexecution_providers = [\"cuda\", \"xnnpack\", \"cpu\"]\n")
        + "[model.provider_options.cuda]\ndevice_id = \"0\"\n";
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwenedge"))
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait::until("the daemon to listen", START, || std::os::unix::net::UnixStream::connect(&socket).is_ok());
    let mut c = crate::common::daemon::Client::connect(&socket);
    c.send(&json!({"id": "s", "op": "status"}));
    let status = c.recv();
    let backend = &status["model"]["backend"];
    assert_eq!(backend["execution_provider"], "cpu", "{backend}");
    let providers = backend["providers"].as_array().unwrap();
    for (i, name) in ["cuda", "xnnpack"].iter().enumerate() {
        assert_eq!(providers[i]["name"], *name);
        assert_eq!(providers[i]["active"], false);
        assert!(providers[i]["reason"].as_str().unwrap().contains("not compiled into"), "{}", providers[i]);
    }
    assert_eq!(providers[2], json!({"name": "cpu", "active": true}));
    c.send(&chat("r", "hello", json!({"max_tokens": 3})));
    assert_eq!(c.until_terminal("r").last().unwrap()["event"], "done", "CPU still serves");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn strict_providers_make_a_missing_provider_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("q.sock");
    let config = dir.path().join("config.toml");
    let text = crate::common::daemon::config_text(&crate::common::model_dir("tiny-a", "int4"), &socket, "")
        .replace("threads = 1\n", "threads = 1\nexecution_providers = [\"qnn\", \"cpu\"]\nstrict_providers = true\n");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qwenedge")).args(["serve", "--config"]).arg(&config).output_in_time();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let last = stderr.lines().last().unwrap();
    assert!(
        last.contains("execution provider 'qnn'") && last.contains("strict_providers") && last.contains("not compiled into"),
        "{stderr}"
    );
    assert!(!socket.exists(), "nothing started");
}

fn doctor(config: &Path, root: &Path) -> (Option<i32>, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_qwenedge"))
        .args(["doctor", "--json", "--config"])
        .arg(config)
        .arg("--root")
        .arg(root)
        .output_in_time();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    (out.status.code(), serde_json::from_str(&stdout).unwrap())
}

#[test]
fn doctor_json_reports_a_recorded_device() {
    let tree = tempfile::tempdir().unwrap();
    let r = tree.path();
    put(r, "/proc/cpuinfo", "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 asimddp\nCPU part\t: 0xd0b\n\nprocessor\t: 1\n\nprocessor\t: 2\n\nprocessor\t: 3\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n");
    put(r, "/sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
    put(r, "/sys/class/thermal/thermal_zone0/temp", "83500\n");
    put(r, "/sys/class/thermal/thermal_zone0/trip_point_0_type", "passive\n");
    put(r, "/sys/class/thermal/thermal_zone0/trip_point_0_temp", "80000\n");
    put(r, "/sys/class/thermal/thermal_zone0/trip_point_1_type", "critical\n");
    put(r, "/sys/class/thermal/thermal_zone0/trip_point_1_temp", "110000\n");
    put(r, "/proc/meminfo", "MemTotal:        8245000 kB\nMemAvailable:    6000000 kB\n");
    put(r, "/proc/self/cgroup", "0::/system.slice/qwenedge.service\n");
    put(r, "/sys/fs/cgroup/system.slice/qwenedge.service/memory.max", "1677721600\n");
    put(r, "/sys/fs/cgroup/system.slice/qwenedge.service/memory.high", "1258291200\n");
    put(r, "/sys/fs/cgroup/system.slice/qwenedge.service/memory.current", "104857600\n");
    put(r, "/proc/pressure/memory", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        crate::common::daemon::config_text(&crate::common::model_dir("tiny-b", "int4"), &dir.path().join("q.sock"), ""),
    )
    .unwrap();

    let (code, report) = doctor(&config, r);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["system"]["cpu"]["cores"], 4);
    assert_eq!(report["system"]["cpu"]["model"], "Raspberry Pi 5 Model B Rev 1.0");
    assert_eq!(report["system"]["cpu"]["features"], json!(["asimd", "asimddp"]));
    assert_eq!(report["onnxruntime"]["version"], "1.31.1");
    assert!(report["onnxruntime"]["providers"].as_array().unwrap().contains(&json!("CPUExecutionProvider")));
    assert_eq!(report["thermal"]["status"], "warn", "83.5 °C is above the passive trip point");
    assert_eq!(report["thermal"]["zones"][0]["temp_c"], 83.5);
    assert_eq!(report["thermal"]["zones"][0]["trips"][1], json!({"kind": "critical", "temp_c": 110.0}));
    assert_eq!(report["memory"]["cgroup"]["max_mb"], 1600.0);
    assert_eq!(report["memory"]["cgroup"]["high_mb"], 1200.0);
    assert!((report["memory"]["meminfo"]["available_mb"].as_f64().unwrap() - 5859.375).abs() < 0.01);
    assert_eq!(report["socket"]["exists"], false);
    assert_eq!(report["model"]["status"], "ok");
    assert_eq!(report["model"]["full_attention_layers"], 2);
    assert_eq!(report["mqtt"]["configured"], false);

    // A broken model directory fails the check and the exit status.
    std::fs::write(&config, crate::common::daemon::config_text(Path::new("/nonexistent/model"), &dir.path().join("q.sock"), "")).unwrap();
    let (code, report) = doctor(&config, r);
    assert_eq!(code, Some(1));
    assert_eq!(report["config"]["status"], "error");
    assert_eq!(report["ok"], false);
}
