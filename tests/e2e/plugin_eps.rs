//! Execution providers from plugin libraries, with the vendors' real wheels from PyPI (fetched
//! and checked by deploy/fetch-ep-plugin.sh; deploy/test.sh names them in `QWENEDGE_EP_QNN`
//! and `QWENEDGE_EP_OPENVINO`): QNN's HTP backend (a simulator on x86-64) serves a fixture and
//! the node placement shows in `status` and `doctor`; OpenVINO serves on an Intel CPU (this
//! machine's, or one emulated by qemu-x86_64) and says that it offers no device on another
//! maker's; a missing library, one that is not a plugin and one built for a newer ONNX Runtime
//! are each one line naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::daemon::{chat, streamed_text, Daemon};
use crate::common::wait::Bounded;
use serde_json::{json, Value};

/// The plugin library the test environment names, else what deploy/fetch-ep-plugin.sh has
/// cached (it fetches it when it is not).
pub(crate) fn plugin(ep: &str) -> PathBuf {
    let var = format!("QWENEDGE_EP_{}", ep.to_uppercase());
    let path = match std::env::var_os(&var) {
        Some(p) => PathBuf::from(p),
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/fetch-ep-plugin.sh");
            // A download from PyPI when it is not cached yet.
            let out = Command::new(&script).arg(ep).output_within(std::time::Duration::from_secs(900));
            assert!(
                out.status.success(),
                "{var} is not set and {} {ep} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default())
        }
    };
    assert!(path.is_file(), "{var}: {} does not exist", path.display());
    path
}

/// `[model]` keys for a plugin provider in front of the CPU; `lib_keys` go into its
/// `[[model.ep_library]]` entry.
fn plugin_keys(ep: &str, path: &Path, lib_keys: &str) -> String {
    format!(
        "execution_providers = [\"{ep}\", \"cpu\"]\n[[model.ep_library]]\nep = \"{ep}\"\npath = {:?}\n{lib_keys}\n",
        path.display().to_string()
    )
}

fn start(keys: &str, options: &str) -> Daemon {
    Daemon::start_customized(&crate::common::model_dir("tiny-a", "int4"), keys, options, |_| {})
}

/// Greedy answers of a daemon to a few chat prompts and an intent (text, intent, confidence).
fn answers(d: &Daemon) -> Vec<String> {
    let mut c = d.client();
    let mut out = Vec::new();
    for (i, text) in ["hello", "what is the weather like", "turn on the kitchen light"].iter().enumerate() {
        let id = format!("c{i}");
        c.send(&chat(&id, text, json!({"max_tokens": 12, "temperature": 0})));
        let events = c.until_terminal(&id);
        assert_eq!(events.last().unwrap()["event"], "done", "{events:?}");
        out.push(streamed_text(&events, &id));
    }
    c.send(&json!({"id": "i", "op": "intent", "text": "turn on the kitchen light"}));
    let end = c.until_terminal("i").pop().unwrap();
    assert_eq!(end["event"], "intent", "{end}");
    out.push(format!("{} {} {}", end["intent"], end["slots"], end["confidence"]));
    out
}

/// Operators whose result does not depend on the arithmetic of the provider that runs them.
const EXACT_OPS: &[&str] = &["Gather", "Cast", "Reshape", "Shape", "Unsqueeze", "Squeeze", "Concat", "Slice", "Transpose", "Identity"];

/// The provider's share of the nodes, checked to add up; returns its op types.
fn placement_of(backend: &Value, ep: &str) -> (u64, Vec<String>) {
    let placement = &backend["placement"];
    let total = placement["total_nodes"].as_u64().unwrap();
    let providers = placement["providers"].as_array().unwrap();
    let sum: u64 = providers.iter().map(|p| p["nodes"].as_u64().unwrap()).sum();
    assert_eq!(sum, total, "{placement}");
    let mine = providers.iter().find(|p| p["ep"] == ep).unwrap_or_else(|| panic!("no {ep} entry: {placement}"));
    let ops = mine["op_types"].as_object().unwrap().keys().cloned().collect();
    (mine["nodes"].as_u64().unwrap(), ops)
}

/// Equal answers where the provider took no node (or only nodes that move data); otherwise
/// the agreement is reported.
fn compare(ep: &str, nodes: u64, ops: &[String], got: &[String], cpu: &[String]) {
    let matched = got.iter().zip(cpu).filter(|(a, b)| a == b).count();
    eprintln!("{ep}: {nodes} nodes ({ops:?}); answers equal to the CPU's: {matched}/{}", cpu.len());
    if ops.iter().all(|op| EXACT_OPS.contains(&op.as_str())) {
        assert_eq!(got, cpu, "{ep} took only data-movement nodes ({ops:?}), so its answers must be the CPU's");
    }
}

#[test]
fn qnn_htp_serves_and_reports_where_the_nodes_went() {
    let cpu = answers(&start("", ""));
    let qnn = plugin("qnn");
    let d = start(&plugin_keys("qnn", &qnn, ""), "[model.provider_options.qnn]\nbackend_type = \"htp\"\n");
    let status = d.status();
    let backend = &status["model"]["backend"];
    let p = &backend["providers"][0];
    assert_eq!((p["name"].as_str(), p["active"].as_bool()), (Some("qnn"), Some(true)), "{backend}");
    assert_eq!(p["library"], qnn.display().to_string());
    assert!(p["device"].as_str().is_some_and(|d| d.contains('(')), "the device and its maker: {p}");
    assert_eq!(backend["execution_provider"], "qnn");
    let (nodes, ops) = placement_of(backend, "qnn");
    let summary = backend["placement"]["summary"].as_str().unwrap();
    assert!(summary.starts_with(&format!("qnn took {nodes} of ")), "{summary}");
    // QNN says why it left the 4-bit products to the CPU (the export's shapes are dynamic).
    let declined = backend["placement"]["providers"][0]["declined"].as_array().unwrap();
    assert!(declined.iter().any(|d| d["op_type"] == "MatMulNBits" && d["reason"].as_str().is_some_and(|r| !r.is_empty())), "{declined:?}");
    assert!(d.log_text().contains("nodes per execution provider"), "the load log has the placement");
    let mut c = d.client();
    c.send(&json!({"id": "m", "op": "models"}));
    let models = c.recv();
    assert_eq!(models["models"][0]["backend"]["placement"]["summary"], summary, "{models}");
    compare("qnn", nodes, &ops, &answers(&d), &cpu);

    let out = Command::new(env!("CARGO_BIN_EXE_qwenedge")).args(["doctor", "--json", "--config"]).arg(&d.config).output_in_time();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["providers"]["status"], "ok", "{}", report["providers"]);
    let requested = &report["providers"]["requested"][0];
    assert!(requested["devices"].as_str().is_some_and(|s| s.starts_with("offers ")), "{requested}");
    assert_eq!(report["placement"]["status"], "ok", "{}", report["placement"]);
    assert_eq!(report["placement"]["summary"], summary);
}

fn intel_cpu() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines().any(|l| l.starts_with("vendor_id") && l.contains("GenuineIntel"))
}

/// How to run the daemon on an Intel CPU (`intel`) or another maker's: natively where this
/// machine is one, else under qemu-x86_64 emulating one (tests/qemu-user.sh installs it).
fn on_cpu(intel: bool) -> Vec<&'static str> {
    if intel == intel_cpu() {
        return Vec::new();
    }
    let found = Command::new("qemu-x86_64").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(
        found,
        "qemu-x86_64 is needed to emulate {} CPU here: tests/qemu-user.sh installs it",
        if intel { "an Intel" } else { "a non-Intel" }
    );
    vec!["qemu-x86_64", "-cpu", if intel { "Haswell-noTSX" } else { "EPYC" }]
}

const OPENVINO_OPTIONS: &str = "[model.provider_options.openvino]\ndevice_type = \"CPU\"\n";

#[test]
fn openvino_serves_on_an_intel_cpu() {
    // OpenVINO's plugin offers devices of Intel hardware only: on another maker's CPU the
    // daemon runs on an emulated Intel one (the plugin's CPU kernels then run emulated too).
    let ov = plugin("openvino");
    let keys = plugin_keys("openvino", &ov, "device = \"cpu\"\nvendor = \"intel\"");
    let d = Daemon::start_via(&on_cpu(true), &crate::common::model_dir("tiny-a", "int4"), &keys, OPENVINO_OPTIONS, |_| {});
    let backend = d.status()["model"]["backend"].clone();
    let p = &backend["providers"][0];
    assert_eq!((p["name"].as_str(), p["active"].as_bool()), (Some("openvino"), Some(true)), "{backend}\n{}", d.log_text());
    assert_eq!(p["device"], "CPU (Intel)");
    assert_eq!(backend["execution_provider"], "openvino");
    let (nodes, ops) = placement_of(&backend, "openvino");
    assert!(nodes > 0 && ops.iter().any(|op| op == "MatMulNBits"), "OpenVINO takes the 4-bit products: {}", backend["placement"]);
    compare("openvino", nodes, &ops, &answers(&d), &answers(&start("", "")));
}

#[test]
fn openvino_offers_no_device_on_other_hardware() {
    let ov = plugin("openvino");
    let keys = plugin_keys("openvino", &ov, "");
    let wrapper = on_cpu(false);
    let d = Daemon::start_via(&wrapper, &crate::common::model_dir("tiny-a", "int4"), &keys, OPENVINO_OPTIONS, |_| {});
    let backend = d.status()["model"]["backend"].clone();
    let p = &backend["providers"][0];
    let reason = p["reason"].as_str().unwrap_or_default();
    assert_eq!(p["active"], false, "{backend}");
    assert!(reason.contains(&ov.display().to_string()) && reason.contains("offers no device on this machine"), "{reason}");
    assert_eq!(backend["execution_provider"], "cpu");
    let mut c = d.client();
    c.send(&chat("r", "hello", json!({"max_tokens": 3})));
    assert_eq!(c.until_terminal("r").last().unwrap()["event"], "done", "the CPU serves");
    drop(d);
    let (code, line) = strict_start(&wrapper, &keys);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains("offers no device on this machine"), "{line}");
}

/// Starts `serve` (through `wrapper`, if any) with `keys` and `strict_providers`; its exit code
/// and last stderr line.
fn strict_start(wrapper: &[&str], keys: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("q.sock");
    let config = dir.path().join("config.toml");
    let text = crate::common::daemon::config_text(&crate::common::model_dir("tiny-a", "int4"), &socket, "")
        .replace("threads = 1\n", &format!("threads = 1\nstrict_providers = true\n{keys}\n"));
    std::fs::write(&config, text).unwrap();
    let slowdown = if wrapper.is_empty() { 1.0 } else { crate::common::wait::EMULATED };
    let out = crate::common::daemon::qwenedge_via(wrapper)
        .args(["serve", "--config"])
        .arg(&config)
        .env("XDG_CACHE_HOME", dir.path())
        .output_within(crate::common::daemon::START.mul_f64(slowdown));
    assert!(!socket.exists(), "nothing started");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr.lines().last().unwrap_or_default().to_string())
}

#[test]
fn a_bad_plugin_library_is_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let too_new = dir.path().join("libtoo_new_plugin.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/plugins/api_too_new.c");
    let cc = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&too_new).arg(&src).output_in_time();
    assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
    // A real shared library that is not a plugin: QNN's system library from the same wheel.
    let not_plugin = plugin("qnn").with_file_name("libQnnSystem.so");
    let cases = [
        (dir.path().join("missing/libonnxruntime_providers_qnn.so"), "does not exist"),
        (not_plugin, "is not an ONNX Runtime execution-provider plugin"),
        (too_new, "needs ONNX Runtime API version 99"),
    ];
    for (path, why) in &cases {
        let keys = plugin_keys("qnn", path, "");
        let d = start(&keys, "");
        let backend = d.status()["model"]["backend"].clone();
        let p = &backend["providers"][0];
        let reason = p["reason"].as_str().unwrap_or_default();
        assert_eq!(p["active"], false, "{backend}");
        assert!(reason.contains(&path.display().to_string()) && reason.contains(why), "{why}: {reason}");
        assert!(!reason.contains('\n'), "one line: {reason}");
        assert_eq!(answers(&d).len(), 4, "the CPU serves");
        drop(d);
        let (code, line) = strict_start(&[], &keys);
        assert_eq!(code, Some(1), "{line}");
        assert!(line.contains("execution provider 'qnn'") && line.contains("strict_providers") && line.contains(why), "{why}: {line}");
    }
}
