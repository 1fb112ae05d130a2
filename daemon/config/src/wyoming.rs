//! `[wyoming]`: the Wyoming-protocol server that Home Assistant's Assist pipelines use as a
//! conversation agent (intent recognition, or intent handling), announced over zeroconf.

use serde::{Deserialize, Serialize};

use super::http::{Listen, ListenText};
use super::sections::Invalid;

/// The default port: beside the Wyoming ports voice services already use (10200 piper, 10300
/// whisper, 10400 openWakeWord, 10500 handle examples, 10700 satellites).
pub const DEFAULT_PORT: u16 = 10800;

/// A Wyoming program the server advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Program {
    /// Intent recognition: a transcript becomes an intent with its entities, which Home
    /// Assistant executes itself.
    Intent,
    /// Intent handling: a transcript becomes a spoken-style answer (a short chat answer).
    Handle,
}

/// `[wyoming]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WyomingSettings {
    /// Serve the Wyoming protocol.
    pub enabled: bool,
    /// `host:port`, or a list of them.
    pub listen: Listen,
    /// Announce `_wyoming._tcp.local.` over mDNS (unset: when `listen` reaches beyond loopback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zeroconf: Option<bool>,
    /// The announced service name (unset: `qwenedge-<hostname>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zeroconf_name: Option<String>,
    /// The programs advertised in `info`. Home Assistant's conversation agent uses the intent
    /// program when a server has both; this server then answers a transcript that is no intent
    /// with the handle program (a chat answer) instead of "not recognized".
    pub programs: Vec<Program>,
    /// Languages of the catalog and of the answers (BCP 47, as Home Assistant sends them).
    pub languages: Vec<String>,
    /// Longest header line.
    pub max_header_bytes: usize,
    /// Longest `data` section.
    pub max_data_bytes: usize,
    /// Longest binary payload (read and discarded: no event this server takes has one).
    pub max_payload_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a connection may stay idle between events (and a write may wait for the peer).
    pub idle_timeout_ms: u64,
    /// Bytes of a streamed answer a peer may leave unread before its request is cancelled.
    pub max_unread_bytes: usize,
    /// Most tokens of a handle answer (spoken answers are short).
    pub handle_max_tokens: usize,
}

impl Default for WyomingSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: ListenText::One(format!("127.0.0.1:{DEFAULT_PORT}")).try_into().expect("the default address parses"),
            zeroconf: None,
            zeroconf_name: None,
            // Home Assistant's `homeassistant/components/wyoming/conversation.py` takes a
            // server's first installed intent program, else its first installed handle program
            // (`if self._intent_service is not None: … elif self._handle_service is not None:`),
            // and runs the intents an intent program returns through its own intent handlers
            // (`intent.async_handle(hass, DOMAIN, intent_type, intent_slots, …)`): device
            // control. A handle program only gets control with `supports_home_control`, which
            // would mean executing intents here. So the intent program is the default.
            programs: vec![Program::Intent],
            languages: vec!["en".into()],
            max_header_bytes: 16 << 10,
            max_data_bytes: 64 << 10,
            max_payload_bytes: 1 << 20,
            max_connections: 32,
            idle_timeout_ms: 60_000,
            max_unread_bytes: 1 << 20,
            handle_max_tokens: 96,
        }
    }
}

impl WyomingSettings {
    /// Whether the service is announced over mDNS.
    pub fn announce(&self) -> bool {
        self.zeroconf.unwrap_or(!self.listen.loopback_only())
    }

    /// Whether `program` is advertised.
    pub fn offers(&self, program: Program) -> bool {
        self.programs.contains(&program)
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        if !self.enabled {
            return Ok(());
        }
        if self.programs.is_empty() {
            return fail("wyoming.programs", "needs \"intent\", \"handle\" or both".into());
        }
        if self.languages.is_empty() || self.languages.iter().any(|l| l.is_empty() || l.len() > 35 || l.contains(char::is_whitespace)) {
            return fail("wyoming.languages", "needs one or more language tags such as \"en\" or \"de-DE\"".into());
        }
        if !(256..=1 << 20).contains(&self.max_header_bytes) {
            return fail("wyoming.max_header_bytes", format!("{} is outside 256..=1048576", self.max_header_bytes));
        }
        if self.max_data_bytes > 16 << 20 {
            return fail("wyoming.max_data_bytes", format!("{} is over 16777216", self.max_data_bytes));
        }
        if self.max_payload_bytes > 64 << 20 {
            return fail("wyoming.max_payload_bytes", format!("{} is over 67108864", self.max_payload_bytes));
        }
        if self.max_connections == 0 {
            return fail("wyoming.max_connections", "must be at least 1".into());
        }
        if !(100..=86_400_000).contains(&self.idle_timeout_ms) {
            return fail("wyoming.idle_timeout_ms", format!("{} is outside 100..=86400000", self.idle_timeout_ms));
        }
        if !(1024..=1 << 30).contains(&self.max_unread_bytes) {
            return fail("wyoming.max_unread_bytes", format!("{} is outside 1024..=1073741824", self.max_unread_bytes));
        }
        if self.handle_max_tokens == 0 {
            return fail("wyoming.handle_max_tokens", "must be at least 1".into());
        }
        if self.zeroconf_name.as_ref().is_some_and(|n| n.is_empty() || n.len() > 63 || n.contains('.')) {
            return fail("wyoming.zeroconf_name", "must be 1 to 63 bytes without dots".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_loopback_unannounced_with_the_intent_program() {
        let s = WyomingSettings { enabled: true, ..Default::default() };
        assert!(s.validate().is_ok());
        assert!(!s.announce() && s.offers(Program::Intent) && !s.offers(Program::Handle));
        let open: Listen = ListenText::One("0.0.0.0:10800".into()).try_into().unwrap();
        assert!(WyomingSettings { listen: open.clone(), ..s.clone() }.announce());
        assert!(!WyomingSettings { listen: open, zeroconf: Some(false), ..s.clone() }.announce());
        assert_eq!(WyomingSettings { programs: vec![], ..s.clone() }.validate().unwrap_err().0, "wyoming.programs");
        assert_eq!(WyomingSettings { languages: vec!["e n".into()], ..s.clone() }.validate().unwrap_err().0, "wyoming.languages");
        let p: WyomingSettings = toml::from_str("programs = [\"intent\", \"handle\"]").unwrap();
        assert!(p.offers(Program::Handle));
        assert!(toml::from_str::<WyomingSettings>("programs = [\"asr\"]").is_err());
    }
}
