//! MQTT topic names, all derived from `[mqtt]` in one place.

use qwenedge_config::mqtt::{is_topic_name, MqttSettings};

/// Every topic `settings` uses.
pub fn topics(settings: &MqttSettings) -> Topics {
    Topics::new(&settings.device(), settings.fleet_group.as_deref(), &settings.discovery_prefix)
}

/// Topic names, derived from the device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// The device id.
    pub device: String,
    /// `qwenedge/<device>/request`.
    pub request: String,
    /// `qwenedge/<device>/status` (retained).
    pub status: String,
    /// `qwenedge/<device>/state` (retained sensor values for Home Assistant).
    pub state: String,
    /// `$share/<group>/qwenedge/fleet/request`, when in a fleet.
    pub fleet_filter: Option<String>,
    /// `<prefix>` of Home Assistant discovery.
    pub discovery_prefix: String,
}

/// The topic fleet requests are published to.
pub const FLEET_REQUEST: &str = "qwenedge/fleet/request";
/// Hermes NLU queries.
pub const HERMES_QUERY: &str = "hermes/nlu/query";

impl Topics {
    /// Topics for `device`.
    pub fn new(device: &str, fleet_group: Option<&str>, discovery_prefix: &str) -> Self {
        let base = format!("qwenedge/{device}");
        Self {
            device: device.to_string(),
            request: format!("{base}/request"),
            status: format!("{base}/status"),
            state: format!("{base}/state"),
            fleet_filter: fleet_group.map(|g| format!("$share/{g}/{FLEET_REQUEST}")),
            discovery_prefix: discovery_prefix.to_string(),
        }
    }

    /// Where events of request `id` go when the request names no reply topic.
    pub fn default_reply(&self, fleet: bool, id: &str) -> Option<String> {
        let topic = if fleet { format!("qwenedge/fleet/response/{id}") } else { format!("qwenedge/{}/response/{id}", self.device) };
        is_topic_name(&topic).then_some(topic)
    }

    /// Home Assistant's birth / last-will topic.
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_derive_from_the_device() {
        let t = Topics::new("kitchen", Some("house"), "homeassistant");
        assert_eq!(t.request, "qwenedge/kitchen/request");
        assert_eq!(t.fleet_filter.as_deref(), Some("$share/house/qwenedge/fleet/request"));
        assert_eq!(t.default_reply(false, "r1").as_deref(), Some("qwenedge/kitchen/response/r1"));
        assert_eq!(t.default_reply(true, "r1").as_deref(), Some("qwenedge/fleet/response/r1"));
        assert_eq!(t.default_reply(false, "a+b"), None);
        assert_eq!(t.ha_status(), "homeassistant/status");
    }
}
