//! `[mqtt]`: the broker, the identity the daemon uses there, and which protocols it speaks,
//! parsed into typed values (the broker URL once, as a [`BrokerUrl`]) and validated with errors
//! that start with the key. The transport (`transport::mqtt`) reads it; topic names derive from
//! it there.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// MQTT protocol level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.
    #[default]
    V5,
}

impl Serialize for ProtocolVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            ProtocolVersion::V311 => "3.1.1",
            ProtocolVersion::V5 => "5",
        })
    }
}

impl<'de> Deserialize<'de> for ProtocolVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ProtocolVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("5, \"5\", 4 or \"3.1.1\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ProtocolVersion, E> {
                match v {
                    5 => Ok(ProtocolVersion::V5),
                    4 => Ok(ProtocolVersion::V311),
                    _ => Err(E::custom(format!("{v} is not an MQTT version (5, or 4 / \"3.1.1\")"))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ProtocolVersion, E> {
                self.visit_u64(u64::try_from(v).map_err(|_| E::custom(format!("{v} is not an MQTT version")))?)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ProtocolVersion, E> {
                if v == 5.0 {
                    Ok(ProtocolVersion::V5)
                } else {
                    Err(E::custom(format!("{v} is not an MQTT version (5, or 4 / \"3.1.1\")")))
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ProtocolVersion, E> {
                match v {
                    "5" | "5.0" => Ok(ProtocolVersion::V5),
                    "4" | "3.1.1" => Ok(ProtocolVersion::V311),
                    _ => Err(E::custom(format!("{v:?} is not an MQTT version (5, or 4 / \"3.1.1\")"))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[mqtt]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// Connect to the broker at all.
    pub enabled: bool,
    /// `mqtt://host:port` (default port 1883) or `mqtts://host:port` (TLS, default port 8883).
    pub url: BrokerUrl,
    /// This device's name in topics (`qwenedge/<device_id>/…`); default: the host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// MQTT client id; default `qwenedge-<device_id>`. It names the persistent session, so it
    /// must be unique per daemon and stable across restarts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// User name for the broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File whose first line is the password (needs `username`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA certificates that sign the broker's certificate (`mqtts://` only;
    /// default: the system's trust store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for brokers that require one; needs `client_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file` (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// `"5"` (MQTT 5) or `"3.1.1"` (also written `4`).
    pub protocol_version: ProtocolVersion,
    /// Keep-alive interval in seconds (5–65535): how soon a dead connection is noticed.
    pub keep_alive_s: u16,
    /// MQTT 5: how long the broker keeps the session (subscriptions, queued requests) after a
    /// disconnect. MQTT 3.1.1 sessions are always persistent.
    pub session_expiry_s: u32,
    /// First pause before reconnecting; it doubles per failed attempt (with jitter).
    pub reconnect_min_ms: u64,
    /// Longest pause between reconnection attempts.
    pub reconnect_max_ms: u64,
    /// Largest request or Hermes query payload accepted; larger ones are answered
    /// `bad_request` (`hermes/error/nlu` for a query).
    pub max_payload_bytes: usize,
    /// Most bytes of messages waiting for the broker (the outbox). When the broker connection
    /// stalls and more than this waits, the running MQTT requests are cancelled and, if still
    /// over, the oldest waiting messages are dropped first.
    pub max_outbox_bytes: usize,
    /// Answer Hermes (Rhasspy / Snips) NLU queries on `hermes/nlu/query`.
    pub hermes: bool,
    /// Publish Home Assistant MQTT discovery configurations.
    pub discovery: bool,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: String,
    /// Also take requests from `qwenedge/fleet/request` through the shared subscription
    /// `$share/<fleet_group>/…`, so the daemons of one group split that stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_group: Option<String>,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            url: BrokerUrl { tls: false, host: "localhost".into(), port: 1883 },
            device_id: None,
            client_id: None,
            username: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            protocol_version: ProtocolVersion::V5,
            keep_alive_s: 30,
            session_expiry_s: 86_400,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            max_payload_bytes: 256 * 1024,
            max_outbox_bytes: 1 << 20,
            hermes: false,
            discovery: false,
            discovery_prefix: "homeassistant".into(),
            fleet_group: None,
        }
    }
}

/// Where the broker is: `mqtt.url`, parsed once when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BrokerUrl {
    /// `mqtts://`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl TryFrom<String> for BrokerUrl {
    type Error = String;

    fn try_from(url: String) -> Result<Self, String> {
        parse_url(&url)
    }
}

impl From<BrokerUrl> for String {
    fn from(u: BrokerUrl) -> String {
        u.to_string()
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", if self.tls { "mqtts" } else { "mqtt" }, self.host, self.port)
    }
}

/// Parses `mqtt://host[:port]` / `mqtts://host[:port]`.
pub fn parse_url(url: &str) -> Result<BrokerUrl, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!("{url:?} must start with mqtt:// or mqtts://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '@', '?', '#']) {
        return Err(format!("{url:?}: only mqtt[s]://host[:port] is supported (credentials go in username / password_file)"));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')) => {
            (h, p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{url:?}: port {p:?} is not 1-65535"))?)
        }
        _ => (rest, default_port),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(BrokerUrl { tls, host: host.to_string(), port })
}

/// Whether `s` can be used as one topic level (no `/`, wildcards or NUL).
pub fn is_topic_level(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.contains(['/', '+', '#', '\0'])
}

/// Whether `s` can be published to (no wildcards or NUL, 1–65535 bytes).
pub fn is_topic_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 65_535 && !s.contains(['+', '#', '\0'])
}

impl MqttSettings {
    /// Checks values; the message starts with the key.
    /// The files `[mqtt]` names exist (when the transport is enabled).
    pub fn check_files(&self) -> Result<(), (String, String)> {
        if self.enabled {
            for (key, file) in [
                ("password_file", &self.password_file),
                ("ca_file", &self.ca_file),
                ("client_cert_file", &self.client_cert_file),
                ("client_key_file", &self.client_key_file),
            ] {
                if let Some(f) = file.as_deref().filter(|f| !f.is_file()) {
                    return Err((format!("mqtt.{key}"), format!("{} does not exist", f.display())));
                }
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((format!("mqtt.{k}"), m));
        if let Some(d) = &self.device_id {
            if !is_topic_level(d) {
                return err("device_id", format!("{d:?} must be 1-128 bytes without '/', '+', '#'"));
            }
        }
        if self.client_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > 256) {
            return err("client_id", "must be 1-256 bytes".into());
        }
        if self.password_file.is_some() && self.username.is_none() {
            return err("password_file", "is set but mqtt.username is not".into());
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return err("client_cert_file", "and mqtt.client_key_file go together".into());
        }
        for (key, file) in
            [("ca_file", &self.ca_file), ("client_cert_file", &self.client_cert_file), ("client_key_file", &self.client_key_file)]
        {
            if file.is_some() && !self.url.tls {
                return err(key, format!("is set but mqtt.url \"{}\" is not mqtts://", self.url));
            }
        }
        if self.keep_alive_s < 5 {
            return err("keep_alive_s", format!("{} is less than 5", self.keep_alive_s));
        }
        if !(10..=3_600_000).contains(&self.reconnect_min_ms) {
            return err("reconnect_min_ms", format!("{} is outside 10..=3600000", self.reconnect_min_ms));
        }
        if self.reconnect_max_ms < self.reconnect_min_ms || self.reconnect_max_ms > 3_600_000 {
            return err("reconnect_max_ms", format!("{} must be between mqtt.reconnect_min_ms and 3600000", self.reconnect_max_ms));
        }
        if !(1024..=16 << 20).contains(&self.max_payload_bytes) {
            return err("max_payload_bytes", format!("{} is outside 1024..=16777216", self.max_payload_bytes));
        }
        if !(4096..=1 << 30).contains(&self.max_outbox_bytes) {
            return err("max_outbox_bytes", format!("{} is outside 4096..=1073741824", self.max_outbox_bytes));
        }
        if !is_topic_name(&self.discovery_prefix) || self.discovery_prefix.starts_with('$') {
            return err("discovery_prefix", format!("{:?} is not a topic name", self.discovery_prefix));
        }
        if let Some(g) = &self.fleet_group {
            if !is_topic_level(g) {
                return err("fleet_group", format!("{g:?} must be 1-128 bytes without '/', '+', '#'"));
            }
        }
        Ok(())
    }

    /// `device_id`, else the host name (made topic-safe).
    pub fn device(&self) -> String {
        self.device_id.clone().unwrap_or_else(|| {
            let host = hostname().unwrap_or_else(|| "qwenedge".into());
            let safe: String = host.chars().map(|c| if matches!(c, '/' | '+' | '#' | '\0') { '_' } else { c }).collect();
            if safe.is_empty() {
                "qwenedge".into()
            } else {
                safe
            }
        })
    }

    /// `client_id`, else `qwenedge-<device>`.
    pub fn client(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| format!("qwenedge-{}", self.device()))
    }

    /// The password: the first line of `password_file`.
    pub fn password(&self) -> std::io::Result<Option<String>> {
        let Some(f) = &self.password_file else { return Ok(None) };
        let text = std::fs::read_to_string(f)?;
        Ok(Some(text.lines().next().unwrap_or("").to_string()))
    }
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok().filter(|s| !s.is_empty())
}

/// Reads a whole file for a setting, naming the key on failure.
pub fn read_setting_file(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("mqtt.{key}: {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports() {
        assert_eq!(parse_url("mqtt://broker.lan").unwrap(), BrokerUrl { tls: false, host: "broker.lan".into(), port: 1883 });
        assert_eq!(parse_url("mqtts://10.0.0.2:8884/").unwrap(), BrokerUrl { tls: true, host: "10.0.0.2".into(), port: 8884 });
        assert_eq!(parse_url("mqtts://10.0.0.2:8884/").unwrap().to_string(), "mqtts://10.0.0.2:8884");
        assert_eq!(parse_url("mqtt://[::1]:1999").unwrap().host, "[::1]");
        for bad in ["tcp://x", "mqtt://", "mqtt://h:0", "mqtt://h:99999", "mqtt://u:p@h", "mqtt://h/path"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        let ok = MqttSettings::default();
        assert!(ok.validate().is_ok());
        let cases: Vec<(MqttSettings, &str)> = vec![
            (MqttSettings { device_id: Some("a/b".into()), ..ok.clone() }, "mqtt.device_id"),
            (MqttSettings { password_file: Some("/p".into()), ..ok.clone() }, "mqtt.password_file"),
            (MqttSettings { ca_file: Some("/ca".into()), ..ok.clone() }, "mqtt.ca_file"),
            (
                MqttSettings { url: parse_url("mqtts://h").unwrap(), client_cert_file: Some("/c".into()), ..ok.clone() },
                "mqtt.client_cert_file",
            ),
            (MqttSettings { keep_alive_s: 1, ..ok.clone() }, "mqtt.keep_alive_s"),
            (MqttSettings { reconnect_min_ms: 5, ..ok.clone() }, "mqtt.reconnect_min_ms"),
            (MqttSettings { reconnect_max_ms: 100, ..ok.clone() }, "mqtt.reconnect_max_ms"),
            (MqttSettings { max_payload_bytes: 10, ..ok.clone() }, "mqtt.max_payload_bytes"),
            (MqttSettings { discovery_prefix: "ha/#".into(), ..ok.clone() }, "mqtt.discovery_prefix"),
            (MqttSettings { fleet_group: Some("a+b".into()), ..ok.clone() }, "mqtt.fleet_group"),
            (
                MqttSettings {
                    enabled: true,
                    url: parse_url("mqtts://h").unwrap(),
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..ok.clone()
                },
                "mqtt.ca_file",
            ),
        ];
        for (s, key) in cases {
            let (k, msg) = s.validate().and_then(|()| s.check_files()).unwrap_err();
            assert_eq!(k, key, "{msg}");
        }
        let missing_ca =
            MqttSettings { enabled: true, url: parse_url("mqtts://h").unwrap(), ca_file: Some("/nonexistent/ca.pem".into()), ..ok };
        assert!(missing_ca.validate().is_ok(), "the values alone are fine; only the file check reads the disk");
    }

    #[test]
    fn protocol_versions_read_as_numbers_or_strings() {
        #[derive(Deserialize)]
        struct W {
            v: ProtocolVersion,
        }
        for (text, want) in [
            ("v = 5", ProtocolVersion::V5),
            ("v = 4", ProtocolVersion::V311),
            ("v = \"3.1.1\"", ProtocolVersion::V311),
            ("v = \"5\"", ProtocolVersion::V5),
        ] {
            assert_eq!(toml::from_str::<W>(text).unwrap().v, want, "{text}");
        }
        assert!(toml::from_str::<W>("v = 3").is_err());
        assert_eq!(serde_json::to_value(ProtocolVersion::V311).unwrap(), "3.1.1");
    }
}
