//! What the daemon says about itself on retained topics: `qwenedge/<device>/status` (online or
//! offline plus the scheduler's view: state, model, queue, counters, budget when the scheduler
//! reports one) and `qwenedge/<device>/state` (flat sensor values for Home Assistant:
//! temperature and memory from the kernel readers, speed from the last request).

use serde_json::{json, Value};

use crate::budget::readers::{self, SysRoot};

/// The status payload while serving: the scheduler's `status` without `uptime_s` (so it only
/// changes when something happens), plus `"status": "online"` and the device id.
pub fn online(status: &Value, device: &str) -> Value {
    let mut v = status.clone();
    if let Value::Object(map) = &mut v {
        map.remove("uptime_s");
        map.insert("status".into(), "online".into());
        map.insert("device".into(), device.into());
    }
    v
}

/// The status payload of a device that is gone (last will, clean shutdown).
pub fn offline(device: &str) -> Value {
    json!({"status": "offline", "device": device})
}

/// The model's short name in a `status` answer.
pub fn model_name(status: &Value) -> Option<String> {
    let m = &status["model"];
    m["id"].as_str().or_else(|| m.as_str()).map(str::to_string)
}

/// Flat sensor values: `state`, `model`, `queue`, `running`, `decode_tok_s`, `thermal_level`
/// (the governor's level), `soc_temp_c` (hottest thermal zone), `mem_available_mb`.
pub fn sensors(status: &Value, root: &SysRoot) -> Value {
    let queue = ["interactive", "background"].iter().filter_map(|k| status["queue"][k].as_u64()).sum::<u64>();
    let hottest = readers::thermal_zones(root).iter().filter_map(|z| z.temp_c).reduce(f64::max);
    let mem = readers::meminfo(root).map(|m| (m.available_mb * 10.0).round() / 10.0);
    json!({
        "state": status["state"],
        "model": model_name(status),
        "queue": queue,
        "running": status["running"].as_array().map_or(0, Vec::len),
        "decode_tok_s": status["last_request"]["decode_tok_s"],
        "thermal_level": status["budget"]["level"],
        "soc_temp_c": hottest,
        "mem_available_mb": mem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Value {
        json!({
            "state": "ready", "uptime_s": 12, "model": {"id": "tiny-a", "path": "/m/tiny-a"},
            "queue": {"interactive": 2, "background": 1, "capacity": 16},
            "running": [{"id": "r1", "priority": "interactive"}],
            "requests": {"done": 3, "failed": 0}, "last_request": {"decode_tok_s": 31.5},
            "budget": {"level": "warm", "temperature_c": 71.0},
        })
    }

    #[test]
    fn online_status_drops_the_uptime() {
        let a = online(&status(), "dev");
        let mut later = status();
        later["uptime_s"] = 99.into();
        assert_eq!(a, online(&later, "dev"), "uptime alone is no change");
        assert_eq!((a["status"].as_str(), a["device"].as_str(), a["state"].as_str()), (Some("online"), Some("dev"), Some("ready")));
        assert_eq!(offline("dev"), json!({"status": "offline", "device": "dev"}));
    }

    #[test]
    fn sensors_read_the_status_and_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        for (zone, temp) in [("thermal_zone0", "41000"), ("thermal_zone1", "57500")] {
            let z = dir.path().join("sys/class/thermal").join(zone);
            std::fs::create_dir_all(&z).unwrap();
            std::fs::write(z.join("temp"), temp).unwrap();
            std::fs::write(z.join("type"), "cpu").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(dir.path().join("proc/meminfo"), "MemTotal: 4096000 kB\nMemAvailable: 1048576 kB\n").unwrap();
        let s = sensors(&status(), &SysRoot::new(dir.path()));
        assert_eq!(
            s,
            json!({"state": "ready", "model": "tiny-a", "queue": 3, "running": 1, "decode_tok_s": 31.5, "thermal_level": "warm", "soc_temp_c": 57.5, "mem_available_mb": 1024.0})
        );
        let empty = sensors(&json!({}), &SysRoot::new(dir.path().join("none")));
        assert_eq!((empty["soc_temp_c"].is_null(), empty["queue"].as_u64()), (true, Some(0)));
    }
}
