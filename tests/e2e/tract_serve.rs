//! The binary on the tract backend: `generate --backend tract`, `serve` with
//! `model.backend = "tract"`, and `auto` without any ONNX Runtime library (serve and doctor),
//! each against ONNX Runtime's answer.

use crate::common::wait::Bounded;
use crate::common::{model_dir, reference};

/// `qwenedge generate` with `--backend tract` and with `--backend ort`: the greedy text (stdout).
fn generate_text(backend: &str, model: &std::path::Path, prompt: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwenedge"))
        .args(["generate", "--threads", "2", "--max-tokens", "16", "--backend", backend, "--model"])
        .arg(model)
        .args(["--prompt", prompt])
        .output_in_time();
    assert!(out.status.success(), "generate --backend {backend}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// One greedy raw completion and the `models` answer from a running daemon.
fn serve_once(daemon: &crate::common::daemon::Daemon, prompt: &str) -> (String, serde_json::Value) {
    let mut c = daemon.client();
    c.send(&serde_json::json!({"id": "m", "op": "models"}));
    let models = c.recv();
    c.send(&serde_json::json!({"id": "c", "op": "complete", "prompt": prompt, "max_tokens": 16, "temperature": 0, "stream": false}));
    let done = c.until_terminal("c").pop().unwrap();
    assert_eq!(done["event"], "done", "{done}");
    (done["text"].as_str().unwrap().to_string(), models)
}

/// The first `backend` object anywhere in a `models` answer.
fn backend_of(models: &serde_json::Value) -> serde_json::Value {
    fn find(v: &serde_json::Value) -> Option<&serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => m.get("backend").filter(|b| b.is_object()).or_else(|| m.values().find_map(find)),
            serde_json::Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    find(models).cloned().unwrap_or_else(|| panic!("no backend in {models}"))
}

/// The binary end to end on the tract backend: `generate --backend tract` prints ONNX Runtime's
/// greedy text, and `serve` with `model.backend = "tract"` answers over its socket with the same
/// text and says which backend runs and why.
#[test]
fn generate_and_serve_with_tract_give_onnxruntime_text() {
    let model = model_dir("tiny-b", "int4");
    let prompt = &reference("tiny-b").prompts[1].text;
    let with_ort = generate_text("ort", &model, prompt);
    assert!(with_ort.trim_end().len() > 1, "ONNX Runtime generated {with_ort:?}");
    assert_eq!(generate_text("tract", &model, prompt), with_ort);

    let daemon = crate::common::daemon::Daemon::start_customized(&model, "backend = \"tract\"", "", |_| {});
    let (text, models) = serve_once(&daemon, prompt);
    assert_eq!(text + "\n", with_ort);
    let backend = backend_of(&models);
    assert_eq!(backend["name"], "tract", "{backend}");
    assert_eq!(backend["chosen"], "model.backend = \"tract\"", "{backend}");
    assert_eq!(backend_of(&daemon.status())["name"], "tract");
}

/// `model.backend = "auto"` with no ONNX Runtime anywhere the daemon looks (no
/// `ORT_DYLIB_PATH`, an empty cache, nothing beside the binary) serves with tract and says why,
/// and `doctor` says the same; with `ORT_DYLIB_PATH` naming a file that does not exist it refuses
/// to start instead.
#[test]
fn auto_falls_back_to_tract_only_when_no_library_was_named() {
    let model = model_dir("tiny-a", "int4");
    let prompt = &reference("tiny-a").prompts[0].text;
    let empty = tempfile::tempdir().unwrap();
    let no_library = |c: &mut std::process::Command| {
        c.env_remove("ORT_DYLIB_PATH").env("QWENEDGE_CACHE", empty.path()).env("HOME", empty.path());
    };
    let daemon = crate::common::daemon::Daemon::start_customized(&model, "backend = \"auto\"", "", no_library);
    let (text, models) = serve_once(&daemon, prompt);
    let backend = backend_of(&models);
    let library = backend["library"].as_str().unwrap_or_default();
    if backend["name"] == "onnxruntime" && (library.starts_with("/usr/") || library == "libonnxruntime.so") {
        eprintln!("skipped: this machine has a system-wide ONNX Runtime ({library}), so auto does not fall back");
        return;
    }
    assert_eq!(backend["name"], "tract", "{backend}");
    let chosen = backend["chosen"].as_str().unwrap();
    assert!(chosen.starts_with("auto: ONNX Runtime unavailable (ONNX Runtime library not found; looked in:"), "{chosen}");
    assert!(chosen.ends_with("; using tract"), "{chosen}");
    assert!(daemon.log_text().contains("using tract"), "the log names the choice:\n{}", daemon.log_text());
    assert_eq!(text + "\n", generate_text("ort", &model, prompt), "tract's answer is ONNX Runtime's");
    let mut doctor = std::process::Command::new(env!("CARGO_BIN_EXE_qwenedge"));
    doctor.args(["doctor", "--json", "--config"]).arg(&daemon.config);
    no_library(&mut doctor);
    let report: serde_json::Value = serde_json::from_slice(&doctor.output_in_time().stdout).unwrap();
    assert_eq!(
        (&report["backend"]["backend"], &report["backend"]["status"]),
        (&"tract".into(), &"ok".into()),
        "doctor: {}",
        report["backend"]
    );
    drop(daemon);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let socket = dir.path().join("q.sock");
    let text = crate::common::daemon::config_text(&model, &socket, "").replacen("threads = 1\n", "threads = 1\nbackend = \"auto\"\n", 1);
    std::fs::write(&config, text).unwrap();
    let missing = dir.path().join("libonnxruntime.so");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwenedge"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("ORT_DYLIB_PATH", &missing)
        .output_in_time();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing.display().to_string()) && stderr.contains("no such file"), "{stderr}");
    assert!(!socket.exists(), "no socket after a failed start");
}

/// SIGHUP with `model.backend` changed from `ort` to `tract` loads the model on the other
/// runtime (what loading reads is compared whole), and `status` says so; the answer stays
/// ONNX Runtime's.
#[test]
fn sighup_changing_the_backend_swaps_the_runtime() {
    let model = model_dir("tiny-b", "int4");
    let prompt = &reference("tiny-b").prompts[1].text;
    let daemon = crate::common::daemon::Daemon::start_customized(&model, "backend = \"ort\"", "", |_| {});
    let (before, _) = serve_once(&daemon, prompt);
    assert_eq!(backend_of(&daemon.status())["name"], "onnxruntime");
    let text = std::fs::read_to_string(&daemon.config).unwrap().replacen("backend = \"ort\"", "backend = \"tract\"", 1);
    std::fs::write(&daemon.config, text).unwrap();
    daemon.signal(libc::SIGHUP);
    let status = daemon.wait_status("the runtime swapped to tract", std::time::Duration::from_secs(60), |s| {
        backend_of(s)["name"] == "tract" && s["model_loaded"] == true && s["state"] == "ready"
    });
    assert_eq!(backend_of(&status)["chosen"], "model.backend = \"tract\"", "{status}");
    let (after, models) = serve_once(&daemon, prompt);
    assert_eq!(backend_of(&models)["name"], "tract");
    assert_eq!(after, before, "tract answers as ONNX Runtime did");
    assert!(daemon.log_text().contains("configuration reloaded"), "{}", daemon.log_text());
}
