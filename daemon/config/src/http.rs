//! `[http]`: the OpenAI- and Ollama-compatible HTTP APIs. `listen` is one `host:port` or a
//! list of them, resolved once when the configuration is read; listening beyond loopback needs
//! bearer tokens (`api_key_file`) unless `allow_unauthenticated` says otherwise.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::sections::Invalid;

/// Ollama's port: a client set up for a local Ollama finds qwenedge unchanged.
pub const DEFAULT_PORT: u16 = 11434;

/// Where to listen: resolved addresses, written back as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ListenText", into = "ListenText")]
pub struct Listen {
    /// As written.
    text: Vec<String>,
    /// Resolved.
    addrs: Vec<SocketAddr>,
}

/// `listen` as written: one address or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ListenText {
    /// `"127.0.0.1:11434"`
    One(String),
    /// `["127.0.0.1:11434", "[::1]:11434"]`
    Many(Vec<String>),
}

impl TryFrom<ListenText> for Listen {
    type Error = String;

    fn try_from(t: ListenText) -> Result<Self, String> {
        let text = match t {
            ListenText::One(s) => vec![s],
            ListenText::Many(v) => v,
        };
        if text.is_empty() {
            return Err("needs at least one host:port".into());
        }
        let mut addrs = Vec::new();
        for s in &text {
            let found = s.to_socket_addrs().map_err(|e| format!("{s:?} is not host:port ({e})"))?;
            for a in found {
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
        }
        Ok(Self { text, addrs })
    }
}

impl From<Listen> for ListenText {
    fn from(l: Listen) -> Self {
        match <[String; 1]>::try_from(l.text) {
            Ok([one]) => ListenText::One(one),
            Err(many) => ListenText::Many(many),
        }
    }
}

impl Listen {
    /// The addresses to bind.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Whether every address is a loopback one.
    pub fn loopback_only(&self) -> bool {
        self.addrs.iter().all(|a| a.ip().is_loopback())
    }
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Serve the HTTP APIs.
    pub enabled: bool,
    /// `host:port`, or a list of them.
    pub listen: Listen,
    /// A file of bearer tokens, one per line; requests must carry one of them
    /// (`Authorization: Bearer …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Serve a non-loopback `listen` without tokens.
    pub allow_unauthenticated: bool,
    /// Largest request body, in bytes; a larger one is answered 413.
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's headers, counted from when the
    /// connection is ready for it (so also how long an idle kept-alive connection stays open).
    pub header_timeout_ms: u64,
    /// How long a connection may stay open with no request on it.
    pub idle_timeout_ms: u64,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Bytes of a streamed answer a client may leave unread before its request is cancelled.
    pub max_unread_bytes: usize,
    /// The model's name in the APIs; default: the model directory's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        let listen = Listen { text: vec![format!("127.0.0.1:{DEFAULT_PORT}")], addrs: vec![([127, 0, 0, 1], DEFAULT_PORT).into()] };
        Self {
            enabled: false,
            listen,
            api_key_file: None,
            allow_unauthenticated: false,
            max_body_bytes: 4 << 20,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 128,
            max_unread_bytes: 1 << 20,
            model_name: None,
        }
    }
}

impl HttpSettings {
    /// The bearer tokens of `api_key_file` (empty without one).
    pub fn api_keys(&self) -> Result<Vec<String>, String> {
        let Some(path) = &self.api_key_file else { return Ok(Vec::new()) };
        let text = std::fs::read_to_string(path).map_err(|e| format!("http.api_key_file: {}: {e}", path.display()))?;
        let keys: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
        if keys.is_empty() {
            return Err(format!("http.api_key_file: {} has no token (one per line)", path.display()));
        }
        Ok(keys)
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        if !self.enabled {
            return Ok(());
        }
        if self.api_key_file.is_none() && !self.allow_unauthenticated && !self.listen.loopback_only() {
            let shown: Vec<String> = self.listen.addrs.iter().map(|a| a.to_string()).collect();
            return fail(
                "http.api_key_file",
                format!(
                    "is required when http.listen ({}) reaches beyond this machine: name a file of bearer tokens, one per line, or set http.allow_unauthenticated = true",
                    shown.join(", ")
                ),
            );
        }
        if let Err(e) = self.api_keys() {
            return fail("http.api_key_file", e.trim_start_matches("http.api_key_file: ").to_string());
        }
        if !(1024..=1 << 30).contains(&self.max_body_bytes) {
            return fail("http.max_body_bytes", format!("{} is outside 1024..=1073741824", self.max_body_bytes));
        }
        if !(100..=3_600_000).contains(&self.header_timeout_ms) {
            return fail("http.header_timeout_ms", format!("{} is outside 100..=3600000", self.header_timeout_ms));
        }
        if !(100..=86_400_000).contains(&self.idle_timeout_ms) {
            return fail("http.idle_timeout_ms", format!("{} is outside 100..=86400000", self.idle_timeout_ms));
        }
        if self.max_connections == 0 {
            return fail("http.max_connections", "must be at least 1".into());
        }
        if !(1024..=1 << 30).contains(&self.max_unread_bytes) {
            return fail("http.max_unread_bytes", format!("{} is outside 1024..=1073741824", self.max_unread_bytes));
        }
        if self.model_name.as_ref().is_some_and(|n| n.is_empty() || n.len() > 128 || n.contains(char::is_whitespace)) {
            return fail("http.model_name", "must be 1 to 128 bytes without spaces".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_one_address_or_a_list_and_writes_them_back() {
        #[derive(Deserialize, Serialize)]
        struct W {
            listen: Listen,
        }
        let one: W = toml::from_str("listen = \"0.0.0.0:8080\"").unwrap();
        assert_eq!(one.listen.addrs(), [SocketAddr::from(([0, 0, 0, 0], 8080))]);
        assert!(!one.listen.loopback_only());
        assert_eq!(toml::to_string(&one).unwrap().trim(), "listen = \"0.0.0.0:8080\"");
        let many: W = toml::from_str("listen = [\"127.0.0.1:1\", \"[::1]:2\"]").unwrap();
        assert!(many.listen.loopback_only());
        assert_eq!(many.listen.addrs().len(), 2);
        assert!(toml::from_str::<W>("listen = \"nonsense\"").is_err());
    }

    #[test]
    fn reaching_beyond_loopback_needs_tokens() {
        let open: Listen = ListenText::One("0.0.0.0:11434".into()).try_into().unwrap();
        let s = HttpSettings { enabled: true, listen: open, ..Default::default() };
        let (key, msg) = s.validate().unwrap_err();
        assert_eq!(key, "http.api_key_file", "{msg}");
        assert!(HttpSettings { allow_unauthenticated: true, ..s.clone() }.validate().is_ok());
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "# tokens\n\nsecret-1\n secret-2 \n").unwrap();
        let with = HttpSettings { api_key_file: Some(keys.clone()), ..s.clone() };
        assert!(with.validate().is_ok());
        assert_eq!(with.api_keys().unwrap(), ["secret-1", "secret-2"]);
        std::fs::write(&keys, "\n").unwrap();
        assert!(with.validate().unwrap_err().1.contains("no token"));
        assert!(HttpSettings { enabled: true, ..Default::default() }.validate().is_ok(), "loopback needs none");
    }
}
