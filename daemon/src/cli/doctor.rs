//! `qwenedge doctor`: what this device is, what ONNX Runtime and providers it has, how hot and
//! how full it is, whether the socket and the daemon answer, whether the MQTT broker accepts a
//! connection and whether the configured model directory is usable. Human output or `--json`;
//! exit status 1 when a check fails.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use qwenedge_budget::readers::{self, SysRoot};
use qwenedge_config::{self as config, Settings};
use qwenedge_engine::backend::ort::StaticGraphs;
use qwenedge_engine::backend::select::{self, BackendKind};
use qwenedge_engine::backend::{plugins, providers, runtime};
use qwenedge_engine::model::ModelSpec;
use serde_json::{json, Value};

/// Arguments of `qwenedge doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Configuration file (default /etc/qwenedge/config.toml when it exists).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
    /// Read /sys and /proc under this directory (for testing against a recorded tree).
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

/// One finding.
struct Check {
    name: &'static str,
    status: &'static str,
    summary: String,
    detail: Value,
}

fn check(name: &'static str, status: &'static str, summary: impl Into<String>, detail: Value) -> Check {
    Check { name, status, summary: summary.into(), detail }
}

/// Runs `doctor`.
pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let root = SysRoot::new(&args.root);
    let mut checks = Vec::new();
    let mut config_ok = true;
    let settings = match config::load(args.config.as_deref(), &config::process_env()) {
        Ok(loaded) => {
            let from = loaded.sources.file.map_or("defaults".into(), |f| f.display().to_string());
            checks.push(check("config", "ok", format!("valid ({from})"), json!({"file": from})));
            (*loaded.settings).clone()
        }
        Err(e) => {
            checks.push(check("config", "error", e.to_string(), json!({"error": e.to_string()})));
            config_ok = false;
            Settings::default()
        }
    };
    checks.push(system(&root));
    checks.extend(onnxruntime(&settings));
    checks.push(backend(&settings));
    checks.push(thermal(&root));
    checks.push(memory(&root, &settings));
    let (socket_check, daemon) = socket(&settings);
    checks.push(socket_check);
    checks.push(placement(daemon.as_ref()));
    checks.push(mqtt(&settings));
    checks.push(homeassistant(&settings, daemon.as_ref()));
    if config_ok {
        checks.push(model(&settings));
    } else {
        // The defaults stand in for the broken file, so their model.path says nothing.
        let why = "not checked: the configuration did not load (see config)";
        checks.push(check("model", "info", why, json!({"configured": null})));
    }

    let failed = checks.iter().any(|c| c.status == "error");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let mut obj = serde_json::Map::new();
        for c in &checks {
            let mut d = c.detail.clone();
            if let Value::Object(m) = &mut d {
                m.insert("status".into(), c.status.into());
                m.insert("summary".into(), c.summary.clone().into());
            }
            obj.insert(c.name.into(), d);
        }
        obj.insert("ok".into(), (!failed).into());
        writeln!(out, "{}", Value::Object(obj))?;
    } else {
        for c in &checks {
            writeln!(out, "[{:^5}] {:<12} {}", c.status, c.name, c.summary)?;
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

fn system(root: &SysRoot) -> Check {
    let cpu = readers::cpu_info(root);
    // SAFETY: uname fills the struct it is given.
    let kernel = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        (libc::uname(&mut u) == 0).then(|| std::ffi::CStr::from_ptr(u.release.as_ptr()).to_string_lossy().into_owned())
    };
    let arch = std::env::consts::ARCH;
    let summary = match &cpu {
        Some(c) => format!("{arch}, {} CPUs ({}), features: {}", c.cores, c.model, c.features.join(" ")),
        None => format!("{arch}, /proc/cpuinfo unreadable"),
    };
    check("system", "ok", summary, json!({"arch": arch, "kernel": kernel, "cpu": cpu}))
}

fn onnxruntime(settings: &Settings) -> Vec<Check> {
    let explicit = settings.model.onnxruntime_library.as_deref();
    let rt = match runtime::load(explicit) {
        Ok(rt) => rt,
        Err(e) => {
            // Without the library the tract backend still serves, where it can be chosen.
            let fallback = select::TRACT_BUILT && settings.model.backend != BackendKind::Ort && !select::named_library(explicit);
            let status = if fallback { "warn" } else { "error" };
            return vec![check("onnxruntime", status, e.to_string(), json!({"error": e.to_string()}))];
        }
    };
    let available = providers::available();
    let library = rt.path.display().to_string();
    let ort = check(
        "onnxruntime",
        "ok",
        format!("{} at {library}; providers: {}", rt.version, available.join(", ")),
        json!({"library": library, "version": rt.version, "providers": available}),
    );
    let requested: Vec<Value> = settings
        .model
        .execution_providers
        .iter()
        .map(|name| {
            if let Some(lib) = settings.model.ep_library.iter().find(|l| &l.ep == name) {
                let library = lib.path.display().to_string();
                return match plugins::inspect(rt, lib) {
                    Ok(devices) => json!({"name": name, "available": true, "library": library, "devices": devices}),
                    Err(why) => json!({"name": name, "available": false, "library": library, "reason": why}),
                };
            }
            let ort_name = providers::ort_name(name).unwrap_or("unknown");
            let present = name == "cpu" || available.iter().any(|a| a == ort_name);
            json!({"name": name, "available": present})
        })
        .collect();
    let missing: Vec<&str> = requested.iter().filter(|r| r["available"] == false).filter_map(|r| r["name"].as_str()).collect();
    let reasons: Vec<String> = requested
        .iter()
        .filter_map(|r| Some(format!("{}: {}", r["name"].as_str()?, r["reason"].as_str().or(r["devices"].as_str())?)))
        .collect();
    let plugins = if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join("; ")) };
    let (status, summary) = match (missing.is_empty(), settings.model.strict_providers) {
        (true, _) => ("ok", format!("requested {} all available{plugins}", settings.model.execution_providers.join(", "))),
        (false, true) => ("error", format!("{} unavailable and model.strict_providers is set{plugins}", missing.join(", "))),
        (false, false) => ("warn", format!("{} unavailable; they will be skipped{plugins}", missing.join(", "))),
    };
    vec![ort, check("providers", status, summary, json!({"requested": requested, "strict": settings.model.strict_providers}))]
}

/// Which execution provider runs which nodes, as the running daemon reports it.
fn placement(daemon: Option<&Value>) -> Check {
    let Some(status) = daemon else {
        return check("placement", "info", "daemon not running (serve logs it when the model loads)", json!({"known": false}));
    };
    let backend = &status["model"]["backend"];
    match backend.get("placement").filter(|p| !p.is_null()) {
        // The static backend's two graphs: decode (`placement`) and prefill.
        Some(p) => match backend.get("prefill_placement").filter(|p| !p.is_null()) {
            Some(prefill) => check(
                "placement",
                "ok",
                format!(
                    "decode graph: {}; prefill graph: {}",
                    p["summary"].as_str().unwrap_or("?"),
                    prefill["summary"].as_str().unwrap_or("?")
                ),
                json!({"decode": p, "prefill": prefill}),
            ),
            None => check("placement", "ok", p["summary"].as_str().unwrap_or("?").to_string(), p.clone()),
        },
        None => {
            let name = backend["name"].as_str().unwrap_or("no model");
            check("placement", "info", format!("{name}: no node placement reported"), json!({"known": false}))
        }
    }
}

/// Whether `auto` would serve through the model directory's static graphs.
fn auto_static(settings: &Settings) -> bool {
    let m = &settings.model;
    let first = m.execution_providers.first();
    let options = first.and_then(|name| m.provider_options.get(name)).cloned().unwrap_or_default();
    m.path.as_deref().is_some_and(|dir| select::auto_static(dir, first.map(|name| (name.as_str(), &options))))
}

/// Which backend `serve` would use, and why.
fn backend(settings: &Settings) -> Check {
    let kind = settings.model.backend;
    let ort = runtime::load(settings.model.onnxruntime_library.as_deref());
    let (status, name, why) = match kind {
        BackendKind::Ort => match &ort {
            Ok(_) => ("ok", "onnxruntime", "model.backend = \"ort\"".to_string()),
            Err(e) => ("error", "none", format!("model.backend = \"ort\" but the library does not load: {e}")),
        },
        BackendKind::Static => match (&ort, settings.model.path.as_deref().map(StaticGraphs::read)) {
            (Err(e), _) => ("error", "none", format!("model.backend = \"static\" but the library does not load: {e}")),
            (Ok(_), None) => ("error", "none", "model.backend = \"static\" but no model.path".to_string()),
            (Ok(_), Some(Err(e))) => ("error", "none", format!("model.backend = \"static\": {e}")),
            (Ok(_), Some(Ok(g))) => (
                "ok",
                "onnxruntime-static",
                format!("model.backend = \"static\": decode and prefill graphs of {} tokens, context {}", g.chunk, g.context),
            ),
        },
        BackendKind::Tract if select::TRACT_BUILT => ("ok", "tract", "model.backend = \"tract\"".to_string()),
        BackendKind::Tract => ("error", "none", "model.backend = \"tract\" but this build has no tract backend".to_string()),
        BackendKind::Auto => match &ort {
            Ok(rt) if auto_static(settings) => {
                ("ok", "onnxruntime-static", format!("auto: ONNX Runtime {} loads; the directory's static graphs for the HTP", rt.version))
            }
            Ok(rt) => ("ok", "onnxruntime", format!("auto: ONNX Runtime {} loads", rt.version)),
            Err(e) if select::named_library(settings.model.onnxruntime_library.as_deref()) => {
                ("error", "none", format!("auto: the named ONNX Runtime library does not load: {e}"))
            }
            Err(e) if select::TRACT_BUILT => {
                ("ok", "tract", format!("auto: ONNX Runtime unavailable ({e}); the pure-Rust tract backend serves"))
            }
            Err(e) => ("error", "none", format!("auto: ONNX Runtime unavailable ({e}) and this build has no tract backend")),
        },
    };
    check(
        "backend",
        status,
        format!("{name}: {why}"),
        json!({"configured": kind, "backend": name, "why": why, "tract_built": select::TRACT_BUILT}),
    )
}

fn thermal(root: &SysRoot) -> Check {
    let zones = readers::thermal_zones(root);
    let hottest = zones.iter().filter_map(|z| z.temp_c.map(|t| (t, z))).max_by(|a, b| a.0.total_cmp(&b.0));
    let (status, summary) = match hottest {
        None => ("info", "no thermal zones readable".to_string()),
        Some((t, z)) => {
            let passive = z.trips.iter().find(|p| p.kind == "passive" || p.kind == "hot").map(|p| p.temp_c).unwrap_or(80.0);
            (if t >= passive { "warn" } else { "ok" }, format!("{} zones, hottest {} ({}) at {t:.1} °C", zones.len(), z.zone, z.kind))
        }
    };
    check("thermal", status, summary, json!({"zones": zones}))
}

fn memory(root: &SysRoot, settings: &Settings) -> Check {
    let mem = readers::meminfo(root);
    let cg = readers::cgroup_memory(root);
    let psi = readers::pressure(root, "memory");
    let limit = cg.as_ref().and_then(|c| c.max_mb);
    let room = match (mem.map(|m| m.available_mb), limit) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    };
    let estimate =
        settings.model.path.as_ref().and_then(|p| ModelSpec::load_variant(p, settings.model.variant.as_deref()).ok()).map(|spec| {
            let context = qwenedge_budget::memory::load_context(settings.model.context_length, spec.context_length);
            let holder = qwenedge_runner::holder(settings.model.backend, settings.model.onnxruntime_library.as_deref());
            qwenedge_budget::memory::model_estimate(&qwenedge_runner::model_shape(&spec), context, holder)
        });
    let need = estimate.map(|e| e.total_mb);
    let (status, summary) = match (room, need) {
        (Some(r), Some(n)) if n > r => {
            ("warn", format!("{r:.0} MiB available, the model needs {}", estimate.map(|e| e.to_string()).unwrap_or_default()))
        }
        (Some(r), _) => ("ok", format!("{r:.0} MiB available{}", limit.map_or(String::new(), |l| format!(" (cgroup limit {l:.0} MiB)")))),
        (None, _) => ("info", "memory figures unreadable".to_string()),
    };
    let detail = json!({"meminfo": mem, "cgroup": cg, "pressure": psi, "model_needs_mb": need, "model_estimate": estimate});
    check("memory", status, summary, detail)
}

/// The socket check, and the daemon's status when it answered.
fn socket(settings: &Settings) -> (Check, Option<Value>) {
    let path = settings.socket.path();
    let shown = path.display().to_string();
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return (
            check("socket", "info", format!("{shown} does not exist (daemon not running)"), json!({"path": shown, "exists": false})),
            None,
        );
    };
    let detail = json!({
        "path": shown, "exists": true, "is_socket": meta.file_type().is_socket(),
        "mode": format!("{:04o}", meta.mode() & 0o7777), "uid": meta.uid(), "gid": meta.gid(),
    });
    if !meta.file_type().is_socket() {
        return (check("socket", "error", format!("{shown} exists but is not a socket"), detail), None);
    }
    let mut detail = detail;
    match daemon_status(&path) {
        Ok(status) => {
            let state = status["state"].as_str().unwrap_or("?").to_string();
            detail["daemon"] = status.clone();
            (check("socket", "ok", format!("{shown}: daemon {state}"), detail), Some(status))
        }
        Err(e) => {
            detail["error"] = e.to_string().into();
            (check("socket", "warn", format!("{shown}: no answer ({e})"), detail), None)
        }
    }
}

fn daemon_status(path: &std::path::Path) -> std::io::Result<Value> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"{\"id\":\"doctor\",\"op\":\"status\"}\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn mqtt(settings: &Settings) -> Check {
    let m = &settings.mqtt;
    if !m.enabled {
        return check("mqtt", "info", "not configured", json!({"configured": false}));
    }
    let detail = |reachable: bool, error: Option<String>| {
        json!({
            "configured": true, "url": m.url.to_string(), "client_id": m.client(), "device_id": m.device(),
            "protocol_version": m.protocol_version, "reachable": reachable, "error": error,
        })
    };
    let probe = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(qwenedge_mqtt::probe(m, Duration::from_secs(5))).map_err(|e| e.to_string()));
    match probe {
        Ok(()) => check("mqtt", "ok", format!("{} accepts client {}", m.url, m.client()), detail(true, None)),
        Err(e) => check("mqtt", "warn", format!("{}: {e}", m.url), detail(false, Some(e))),
    }
}

/// `[homeassistant]`: Home Assistant reached with the token and the home read now, the age of
/// the last copy, and the running daemon's link.
fn homeassistant(settings: &Settings, daemon: Option<&Value>) -> Check {
    let h = &settings.homeassistant;
    let Some(url) = &h.url else { return check("homeassistant", "info", "not configured", json!({"configured": false})) };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let copy = h.copy_path().and_then(|p| qwenedge_homeassistant::load_copy(&p).ok().flatten());
    let copy_age_s = copy.as_ref().map(|c| now_ms.saturating_sub(c.synced_at_ms) / 1000);
    let link = daemon.and_then(|d| d.get("home")).cloned();
    let read = || -> Result<qwenedge_homeassistant::HaHome, String> {
        let token = h.token()?;
        let ws = h.websocket_url().ok_or("not an http(s) address")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            let mut conn = qwenedge_homeassistant::Connection::open(&ws, &token, Duration::from_secs(10)).await?;
            let home = qwenedge_homeassistant::fetch(&mut conn).await;
            conn.close().await;
            home
        })
        .map_err(|e| e.to_string())
    };
    let detail = |error: Option<&str>, entities: Option<usize>| json!({"configured": true, "url": url, "entities": entities, "copy_age_s": copy_age_s, "daemon": link, "error": error});
    let age = copy_age_s.map_or("no copy kept yet".to_string(), |s| format!("the last copy is {s} s old"));
    match read() {
        Ok(home) => check(
            "homeassistant",
            "ok",
            format!(
                "{url}: Home Assistant {}, {} entities exposed to Assist, {} areas, {} floors; {age}",
                home.ha_version,
                home.devices.len(),
                home.areas.len(),
                home.floors.len()
            ),
            detail(None, Some(home.devices.len())),
        ),
        Err(e) => check("homeassistant", "warn", format!("{url}: {e}; {age}"), detail(Some(&e), None)),
    }
}

fn model(settings: &Settings) -> Check {
    let Some(path) = &settings.model.path else {
        return check("model", "error", "model.path is not set", json!({"configured": false}));
    };
    match ModelSpec::load_variant(path, settings.model.variant.as_deref()) {
        Ok(spec) => check(
            "model",
            "ok",
            format!(
                "{} ({}, {}): {} layers ({} full attention), {:.0} MiB weights, context {}",
                path.display(),
                spec.model_type,
                spec.layout.describe(),
                spec.layers.len(),
                spec.full_attention_layers(),
                spec.weight_bytes() as f64 / (1 << 20) as f64,
                spec.context_length
            ),
            json!({
                "path": path, "type": spec.model_type, "layout": spec.layout.describe(), "layers": spec.layers.len(),
                "full_attention_layers": spec.full_attention_layers(), "weights_mb": spec.weight_bytes() / (1 << 20),
                "context_length": spec.context_length, "kv_bytes_per_token": spec.kv_bytes_per_token(),
                "state_bytes": spec.fixed_state_bytes(),
            }),
        ),
        Err(e) => check("model", "error", e.to_string(), json!({"path": path, "error": e.to_string()})),
    }
}
