//! Home Assistant MQTT discovery: one device with nine sensors (status, model, queue length,
//! decode speed, thermal level, SoC temperature, memory available, the home's sync with Home
//! Assistant and when its copy was taken). Each sensor's retained configuration
//! points at the retained `qwenedge/<device>/state` topic with a value template, and its
//! availability at the status topic. Configurations are built here without I/O; the session
//! publishes them on connect and whenever Home Assistant announces itself, and
//! `qwenedge mqtt-forget` clears them.

use serde_json::{json, Map, Value};

use super::topics::Topics;

/// Identity of the device in Home Assistant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The model's short name.
    pub model: String,
    /// qwenedge's version.
    pub sw_version: String,
}

struct Sensor {
    key: &'static str,
    name: &'static str,
    unit: Option<&'static str>,
    device_class: Option<&'static str>,
    numeric: bool,
    icon: &'static str,
}

const SENSORS: &[Sensor] = &[
    Sensor { key: "state", name: "Status", unit: None, device_class: None, numeric: false, icon: "mdi:robot" },
    Sensor { key: "model", name: "Model", unit: None, device_class: None, numeric: false, icon: "mdi:brain" },
    Sensor { key: "queue", name: "Queue length", unit: Some("requests"), device_class: None, numeric: true, icon: "mdi:tray-full" },
    Sensor { key: "decode_tok_s", name: "Decode speed", unit: Some("tok/s"), device_class: None, numeric: true, icon: "mdi:speedometer" },
    Sensor { key: "thermal_level", name: "Thermal level", unit: None, device_class: None, numeric: false, icon: "mdi:thermometer-alert" },
    Sensor {
        key: "soc_temp_c",
        name: "SoC temperature",
        unit: Some("°C"),
        device_class: Some("temperature"),
        numeric: true,
        icon: "mdi:thermometer",
    },
    Sensor {
        key: "mem_available_mb",
        name: "Memory available",
        unit: Some("MiB"),
        device_class: Some("data_size"),
        numeric: true,
        icon: "mdi:memory",
    },
    Sensor { key: "home_sync", name: "Home sync", unit: None, device_class: None, numeric: false, icon: "mdi:home-sync" },
    Sensor {
        key: "home_synced_at",
        name: "Home copy taken",
        unit: None,
        device_class: Some("timestamp"),
        numeric: false,
        icon: "mdi:home-clock",
    },
];

/// The device id made safe for discovery topics and unique ids (`[A-Za-z0-9_-]`).
fn node_id(device: &str) -> String {
    let safe: String = device.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("qwenedge_{safe}")
}

fn config_topic(topics: &Topics, key: &str) -> String {
    format!("{}/sensor/{}/{key}/config", topics.discovery_prefix, node_id(&topics.device))
}

/// Every retained configuration message (topic, payload).
pub fn configs(topics: &Topics, info: &DeviceInfo) -> Vec<(String, Vec<u8>)> {
    let node = node_id(&topics.device);
    let device = json!({
        "identifiers": [node],
        "name": format!("qwenedge {}", topics.device),
        "model": info.model,
        "sw_version": info.sw_version,
        "manufacturer": "qwenedge",
    });
    SENSORS
        .iter()
        .map(|s| {
            let mut c = Map::new();
            c.insert("name".into(), s.name.into());
            c.insert("unique_id".into(), format!("{node}_{}", s.key).into());
            c.insert("object_id".into(), format!("{node}_{}", s.key).into());
            c.insert("state_topic".into(), topics.state.clone().into());
            c.insert("value_template".into(), format!("{{{{ value_json.{} }}}}", s.key).into());
            c.insert("availability_topic".into(), topics.status.clone().into());
            c.insert("availability_template".into(), "{{ value_json.status }}".into());
            c.insert("payload_available".into(), "online".into());
            c.insert("payload_not_available".into(), "offline".into());
            c.insert("icon".into(), s.icon.into());
            if let Some(u) = s.unit {
                c.insert("unit_of_measurement".into(), u.into());
            }
            if let Some(d) = s.device_class {
                c.insert("device_class".into(), d.into());
            }
            if s.numeric {
                c.insert("state_class".into(), "measurement".into());
            }
            c.insert("device".into(), device.clone());
            (config_topic(topics, s.key), serde_json::to_vec(&Value::Object(c)).unwrap_or_default())
        })
        .collect()
}

/// The configuration topics, for removing the device (publish empty retained payloads).
pub fn config_topics(topics: &Topics) -> Vec<String> {
    SENSORS.iter().map(|s| config_topic(topics, s.key)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_device_with_nine_sensors_reading_the_state_topic() {
        let topics = Topics::new("kitchen.pi", None, "homeassistant");
        let info = DeviceInfo { model: "qwen3.5-0.8b-int4".into(), sw_version: "0.1.0".into() };
        let configs = configs(&topics, &info);
        assert_eq!(configs.len(), 9);
        let mut unique = std::collections::HashSet::new();
        for (topic, payload) in &configs {
            assert!(topic.starts_with("homeassistant/sensor/qwenedge_kitchen_pi/") && topic.ends_with("/config"), "{topic}");
            let c: Value = serde_json::from_slice(payload).unwrap();
            for key in [
                "name",
                "unique_id",
                "state_topic",
                "value_template",
                "availability_topic",
                "payload_available",
                "payload_not_available",
                "device",
            ] {
                assert!(!c[key].is_null(), "{key} in {c}");
            }
            assert!(unique.insert(c["unique_id"].as_str().unwrap().to_string()));
            assert_eq!(c["state_topic"], "qwenedge/kitchen.pi/state");
            assert_eq!(c["availability_topic"], "qwenedge/kitchen.pi/status");
            assert_eq!(c["device"]["identifiers"][0], "qwenedge_kitchen_pi");
            assert_eq!(c["device"]["manufacturer"], "qwenedge");
            assert_eq!(c["device"]["model"], "qwen3.5-0.8b-int4");
        }
        let temp: Value = serde_json::from_slice(&configs[5].1).unwrap();
        assert_eq!((temp["device_class"].as_str(), temp["unit_of_measurement"].as_str()), (Some("temperature"), Some("°C")));
        assert_eq!(temp["value_template"], "{{ value_json.soc_temp_c }}");
        assert_eq!(config_topics(&topics), configs.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>());
    }
}
