//! `[homeassistant]`: where the home's names come from when Home Assistant keeps them — its
//! address, the long-lived access token's file (refused when others may read it), where the
//! last copy is kept, and how long to wait between reconnection attempts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sections::Invalid;

/// The link to Home Assistant's WebSocket API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistantSettings {
    /// Home Assistant's address (`http://homeassistant.local:8123`); unset: the home's names
    /// come from the configuration (`intents.devices`, the catalog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file holding a long-lived access token of an administrator (Home Assistant lists the
    /// entities exposed to Assist only to administrators). It may not be readable by others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Where the last copy of the home is kept, so a restart while Home Assistant is down still
    /// knows the names (default: `home-assistant.json` in the state directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_file: Option<PathBuf>,
    /// The longest wait between reconnection attempts (they start at one second and double).
    pub retry_max_ms: u64,
}

impl Default for HomeAssistantSettings {
    fn default() -> Self {
        Self { url: None, token_file: None, copy_file: None, retry_max_ms: 60_000 }
    }
}

impl HomeAssistantSettings {
    /// Whether the home comes from Home Assistant.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// The WebSocket address for `url` (`ws://host:port/api/websocket`, `wss://` for https).
    pub fn websocket_url(&self) -> Option<String> {
        let url = self.url.as_deref()?.trim_end_matches('/');
        let (scheme, rest) = url.split_once("://")?;
        let ws = match scheme {
            "http" => "ws",
            "https" => "wss",
            _ => return None,
        };
        Some(format!("{ws}://{rest}/api/websocket"))
    }

    /// The token, read from `token_file`; the error names the file and what is wrong.
    pub fn token(&self) -> Result<String, String> {
        let Some(path) = &self.token_file else { return Err("is required with homeassistant.url".into()) };
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o007 != 0 || mode & 0o020 != 0 {
                return Err(format!(
                    "{}: mode {:o} lets other users read or change the token; chmod 600 (or 640 with the service's group)",
                    path.display(),
                    mode & 0o777
                ));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(format!(
                "{}: must hold one token (Home Assistant: your profile, Security, Long-lived access tokens)",
                path.display()
            ));
        }
        Ok(token.to_string())
    }

    /// The file the last copy is kept in: `copy_file`, else the state directory's.
    pub fn copy_path(&self) -> Option<PathBuf> {
        self.copy_file.clone().or_else(|| crate::cache::state_file("home-assistant.json"))
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        let Some(url) = &self.url else {
            if self.token_file.is_some() {
                return fail("homeassistant.url", "is required with homeassistant.token_file".into());
            }
            return Ok(());
        };
        if self.websocket_url().is_none() || url.contains(char::is_whitespace) || url.split_once("://").is_some_and(|(_, r)| r.is_empty()) {
            return fail("homeassistant.url", format!("{url:?} is not an http:// or https:// address (http://homeassistant.local:8123)"));
        }
        if let Err(e) = self.token() {
            return fail("homeassistant.token_file", e);
        }
        if !(1_000..=3_600_000).contains(&self.retry_max_ms) {
            return fail("homeassistant.retry_max_ms", format!("{} is outside 1000..=3600000", self.retry_max_ms));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_token_file_must_be_private_and_hold_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc.def.ghi\n").unwrap();
        let s = HomeAssistantSettings { url: Some("http://ha.local:8123/".into()), token_file: Some(path.clone()), ..Default::default() };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (key, msg) = s.validate().unwrap_err();
        assert_eq!(key, "homeassistant.token_file");
        assert!(msg.contains("mode 644") && msg.contains("chmod 600"), "{msg}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        s.validate().unwrap();
        assert_eq!(s.token().unwrap(), "abc.def.ghi");
        assert_eq!(s.websocket_url().unwrap(), "ws://ha.local:8123/api/websocket");
        std::fs::write(&path, "\n").unwrap();
        assert!(s.validate().unwrap_err().1.contains("must hold one token"));
        let bad = HomeAssistantSettings { url: Some("ha.local:8123".into()), ..s.clone() };
        assert_eq!(bad.validate().unwrap_err().0, "homeassistant.url");
        let tls = HomeAssistantSettings { url: Some("https://ha.example".into()), ..s };
        assert_eq!(tls.websocket_url().unwrap(), "wss://ha.example/api/websocket");
        let alone = HomeAssistantSettings { token_file: Some(path), ..Default::default() };
        assert_eq!(alone.validate().unwrap_err().0, "homeassistant.url");
    }
}
