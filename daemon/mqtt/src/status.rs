//! What the daemon says about itself on retained topics: `qwenedge/<device>/status` (online or
//! offline plus the scheduler's status report, without the uptime and the budget's readings so
//! that it only changes when something happens) and `qwenedge/<device>/state` (flat sensor values for Home Assistant,
//! all from the same status report: the temperature and memory the budget governor acts on,
//! the speed of the last request).

use serde::Serialize;
use serde_json::{json, Value};

use qwenedge_api::{BudgetReport, SequenceReport, StatusReport};

/// The status payload while serving.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Online {
    /// The scheduler's report, without `uptime_s`.
    #[serde(flatten)]
    pub report: StatusReport,
    /// Always `online`.
    pub status: &'static str,
    /// The device id.
    pub device: String,
}

/// The status payload while serving: the scheduler's `status` without what changes by itself —
/// `uptime_s`, the memory the sequences hold (it grows with every token) and the budget's readings (temperature, memory, pressure: the kernel's figures
/// move at every poll, and the state topic carries them) — plus `"status": "online"` and the
/// device id. The thermal level, the thresholds and whether memory is under pressure stay.
pub fn online(report: &StatusReport, device: &str) -> Online {
    let budget = BudgetReport {
        temperature_c: None,
        memory_room_mb: None,
        memory_available_mb: None,
        memory_pressure: None,
        ..report.budget.clone()
    };
    let sequences = SequenceReport { held_mb: 0.0, ..report.sequences };
    Online { report: StatusReport { uptime_s: None, budget, sequences, ..report.clone() }, status: "online", device: device.to_string() }
}

/// The status payload of a device that is gone (last will, clean shutdown).
pub fn offline(device: &str) -> Value {
    json!({"status": "offline", "device": device})
}

/// The model's short name in a status report.
pub fn model_name(report: &StatusReport) -> Option<String> {
    report.model.id.clone()
}

/// Flat sensor values for Home Assistant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sensors {
    /// Lifecycle phase.
    pub state: &'static str,
    /// The model's short name.
    pub model: Option<String>,
    /// Requests waiting.
    pub queue: usize,
    /// Requests running.
    pub running: usize,
    /// Decode speed of the last request.
    pub decode_tok_s: Option<f64>,
    /// The thermal governor's level.
    pub thermal_level: &'static str,
    /// The temperature of the zone the thermal governor watches (°C): `budget.thermal_zone`,
    /// or the hottest zone when none is set.
    pub soc_temp_c: Option<f64>,
    /// `MemAvailable` (MiB).
    pub mem_available_mb: Option<f64>,
    /// The link to Home Assistant (`live`, `stale`, `connecting`; `off` without `[homeassistant]`).
    pub home_sync: &'static str,
    /// When the home's copy in use was taken (ISO 8601, UTC).
    pub home_synced_at: Option<String>,
}

/// `ms` since the Unix epoch as ISO 8601 in UTC (`2026-12-07T11:13:15Z`).
fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The sensor values, all from the status report: what Home Assistant shows is what the budget
/// governor acts on (its zone, its memory reading under `budget.root`).
pub fn sensors(report: &StatusReport) -> Sensors {
    Sensors {
        state: report.state.as_str(),
        model: model_name(report),
        queue: report.queued(),
        running: report.running.len(),
        decode_tok_s: report.last_request.map(|t| t.decode_tok_s),
        thermal_level: report.budget.level.as_str(),
        soc_temp_c: report.budget.temperature_c,
        mem_available_mb: report.budget.memory_available_mb.map(|mb| (mb * 10.0).round() / 10.0),
        home_sync: report.home.as_ref().map_or("off", |h| h.sync.as_str()),
        home_synced_at: report.home.as_ref().and_then(|h| h.synced_at_ms).map(iso8601),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwenedge_api::*;

    fn report() -> StatusReport {
        let backend = BackendReport {
            name: "onnxruntime".into(),
            version: "1.31.1".into(),
            library: None,
            execution_provider: "cpu".into(),
            providers: vec![],
            threads: 2,
            chosen: String::new(),
            placement: None,
            prefill_placement: None,
        };
        StatusReport {
            state: Phase::Ready,
            version: "0.1.0".into(),
            uptime_s: Some(12),
            model: ModelReport {
                id: Some("tiny-a".into()),
                path: "/m/tiny-a".into(),
                model_type: "qwen3_5_text".into(),
                context_length: 4096,
                vocab_size: 248320,
                layers: 4,
                full_attention_layers: 1,
                weights_mb: 3,
                hidden_size: 64,
                quantization: "int4".into(),
                layout: "onnxruntime-genai".into(),
                chat_template: true,
                backend,
            },
            queue: QueueReport { interactive: 2, background: 1, capacity: 16 },
            running: vec![RunningReport { id: "r1".into(), priority: Priority::Interactive, state: SequenceState::Running }],
            sequences: SequenceReport { in_progress: 1, paused: 0, held_mb: 20.5 },
            requests: RequestCounts { done: 3, failed: 0 },
            last_request: Some(RequestTimings { decode_tok_s: 31.5, ..Default::default() }),
            model_loaded: true,
            budget: BudgetReport { level: ThermalLevel::Warm, temperature_c: Some(71.0), ..Default::default() },
            cache: None,
            home: None,
        }
    }

    #[test]
    fn online_status_drops_the_uptime_and_the_readings() {
        let a = online(&report(), "dev");
        let later = StatusReport { uptime_s: Some(99), ..report() };
        assert_eq!(a, online(&later, "dev"), "uptime alone is no change");
        let readings =
            BudgetReport { temperature_c: Some(72.5), memory_available_mb: Some(1234.5), memory_pressure: Some(0.1), ..report().budget };
        assert_eq!(a, online(&StatusReport { budget: readings, ..report() }, "dev"), "new readings alone are no change");
        let hotter = BudgetReport { level: ThermalLevel::Hot, ..report().budget };
        assert_ne!(a, online(&StatusReport { budget: hotter, ..report() }, "dev"), "a new thermal level is a change");
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!((v["status"].as_str(), v["device"].as_str(), v["state"].as_str()), (Some("online"), Some("dev"), Some("ready")));
        assert!(v.get("uptime_s").is_none());
        assert_eq!(v["model"]["id"], "tiny-a");
        assert_eq!(offline("dev"), json!({"status": "offline", "device": "dev"}));
    }

    #[test]
    fn the_home_copy_time_is_iso_8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_796_634_795_000), "2026-12-07T09:13:15Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn sensors_are_the_status_reports_figures() {
        let budget = BudgetReport { temperature_c: Some(57.5), memory_available_mb: Some(1024.04), ..report().budget };
        let s = serde_json::to_value(sensors(&StatusReport { budget, ..report() })).unwrap();
        assert_eq!(
            s,
            json!({"state": "ready", "model": "tiny-a", "queue": 3, "running": 1, "decode_tok_s": 31.5, "thermal_level": "warm", "soc_temp_c": 57.5, "mem_available_mb": 1024.0, "home_sync": "off", "home_synced_at": null})
        );
        let budget = BudgetReport { temperature_c: None, ..report().budget };
        let empty = sensors(&StatusReport { last_request: None, budget, ..report() });
        assert_eq!((empty.soc_temp_c, empty.decode_tok_s, empty.mem_available_mb), (None, None, None));
    }
}
