//! `[hub]`: where models are pulled from (the Hugging Face Hub or a mirror), the token for
//! private or gated repositories, the model store's directory, and the names the Ollama API's
//! `/api/pull` knows besides `owner/name`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sections::Invalid;

/// Pulling models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubSettings {
    /// The Hub's address (default `https://huggingface.co`; `HF_ENDPOINT` overrides it, as for
    /// Hugging Face's own tools).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A file holding an access token (else `HF_TOKEN`, `HF_TOKEN_PATH`, `$HF_HOME/token`,
    /// `~/.cache/huggingface/token`); public repositories need none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The model store (default: `models` in the state directory — `/var/lib/qwenedge/models`
    /// for the service and root — else `$XDG_DATA_HOME/qwenedge/models` or
    /// `~/.local/share/qwenedge/models`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models_dir: Option<PathBuf>,
    /// Ollama model names and the repository each pulls (`"qwen3.5:0.8b" =
    /// "onnx-community/Qwen3.5-0.8B-ONNX-OPT"`, optionally `…:variant`); a table given here
    /// replaces the built-in one.
    pub aliases: BTreeMap<String, String>,
    /// Let the Ollama API's `/api/pull` download models into the store (Home Assistant's
    /// Ollama integration installs the model it is given that way).
    pub api_pull: bool,
}

impl Default for HubSettings {
    fn default() -> Self {
        let aliases = [("0.8b", "0.8B"), ("2b", "2B"), ("4b", "4B")]
            .into_iter()
            .map(|(tag, size)| (format!("qwen3.5:{tag}"), format!("onnx-community/Qwen3.5-{size}-ONNX-OPT")))
            .collect();
        Self { endpoint: None, token_file: None, models_dir: None, aliases, api_pull: true }
    }
}

/// Whether `repo` is `owner/name` in the characters the Hub allows.
fn is_repo(repo: &str) -> bool {
    let ok = |p: &str| !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    matches!(repo.split_once('/'), Some((o, n)) if ok(o) && ok(n))
}

impl HubSettings {
    /// The model store's directory; `None` when no home or state directory is known.
    pub fn models_path(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.models_dir {
            return Some(dir.clone());
        }
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(state) = crate::cache::state_directory() {
            return Some(state.join("models"));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return Some(PathBuf::from("/var/lib/qwenedge/models"));
        }
        var("XDG_DATA_HOME").or_else(|| var("HOME").map(|h| h.join(".local/share"))).map(|d| d.join("qwenedge/models"))
    }

    /// The repository and variant an Ollama model name pulls: an alias, else `owner/name`
    /// with an optional `:variant` (`:latest` is the default variant). `None` for other names.
    pub fn resolve(&self, name: &str) -> Option<(String, Option<String>)> {
        let target = self.aliases.get(name).or_else(|| self.aliases.get(name.strip_suffix(":latest")?)).map(String::as_str).unwrap_or(name);
        let (repo, variant) = match target.split_once(':') {
            Some((r, "latest")) => (r, None),
            Some((r, v)) => (r, Some(v.to_string())),
            None => (target, None),
        };
        is_repo(repo).then(|| (repo.to_string(), variant))
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if let Some(e) = &self.endpoint {
            let rest = e.strip_prefix("https://").or_else(|| e.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err(("hub.endpoint".into(), format!("{e:?} is not an http:// or https:// address")));
            }
        }
        if self.models_dir.as_ref().is_some_and(|d| d.is_relative()) {
            return Err(("hub.models_dir".into(), "must be an absolute path".into()));
        }
        for (name, target) in &self.aliases {
            let repo = target.split(':').next().unwrap_or_default();
            if !is_repo(repo) || target.matches(':').count() > 1 {
                return Err((format!("hub.aliases.{name}"), format!("{target:?} is not owner/name or owner/name:variant")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_names_resolve_to_repositories() {
        let s = HubSettings::default();
        assert_eq!(s.resolve("qwen3.5:0.8b"), Some(("onnx-community/Qwen3.5-0.8B-ONNX-OPT".into(), None)));
        assert_eq!(s.resolve("onnx-community/Qwen3.5-2B-ONNX:fp32"), Some(("onnx-community/Qwen3.5-2B-ONNX".into(), Some("fp32".into()))));
        assert_eq!(s.resolve("onnx-community/Qwen3.5-2B-ONNX:latest"), Some(("onnx-community/Qwen3.5-2B-ONNX".into(), None)));
        assert_eq!(s.resolve("llama3.2"), None);
        let bad = HubSettings { aliases: [("x".to_string(), "not a repo".to_string())].into(), ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().0, "hub.aliases.x");
        let bad = HubSettings { endpoint: Some("hub.local".into()), ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().0, "hub.endpoint");
    }
}
