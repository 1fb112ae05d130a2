//! `[cache]`: the prefix cache's memory, the snapshots saved on disk and ONNX Runtime's
//! optimized models — the budgets, and where the files go (the default directories come from
//! the service's environment: systemd's `STATE_DIRECTORY`, else `XDG_CACHE_HOME` or the home
//! directory's `.cache`). The engine receives plain byte budgets and directories.

use serde::{Deserialize, Serialize};

/// `[cache]` of the daemon's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Memory for prefix snapshots (MiB, 0 = no prefix cache).
    pub max_mb: u64,
    /// A conversation prefix is stored only when it saves at least this many prompt tokens
    /// over the prefix the request already reused.
    pub min_tokens: usize,
    /// Prefill the intent catalog's prompt (system prompt + tools) once the model is loaded and
    /// idle, and keep its state pinned for every `intent` request.
    pub pin_intents: bool,
    /// Where pinned prefix snapshots are saved so that a restart restores them instead of
    /// prefilling (default: `$STATE_DIRECTORY/prefix` under systemd, else
    /// `$XDG_CACHE_HOME/qwenedge/prefix` or `~/.cache/qwenedge/prefix`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<std::path::PathBuf>,
    /// Disk for saved snapshots (MiB, 0 = none are saved); the oldest files go first.
    pub max_disk_mb: u64,
    /// Where ONNX Runtime's optimized model is saved with its pre-packed weights, to be mapped
    /// on later loads instead of packed again (default: `optimized` beside `dir`'s default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimized_dir: Option<std::path::PathBuf>,
    /// Disk for saved optimized models (MiB, 0 = none: weights are packed at every load); the
    /// least recently used go first.
    pub optimized_max_disk_mb: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_mb: 256,
            min_tokens: 32,
            pin_intents: true,
            dir: None,
            max_disk_mb: 512,
            optimized_dir: None,
            optimized_max_disk_mb: 8192,
        }
    }
}

/// `leaf` under the service's state directory (systemd's `STATE_DIRECTORY`), else under
/// `$XDG_CACHE_HOME/qwenedge` or `~/.cache/qwenedge`; `None` when no home directory is known.
fn default_dir(leaf: &str) -> Option<std::path::PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    if let Some(state) = state_directory() {
        return Some(state.join(leaf));
    }
    var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache"))).map(|c| c.join("qwenedge").join(leaf))
}

/// The service's state directory: the first of systemd's `STATE_DIRECTORY` list, if set.
pub(crate) fn state_directory() -> Option<std::path::PathBuf> {
    std::env::var("STATE_DIRECTORY").ok().and_then(|v| v.split(':').next().map(str::to_string)).filter(|v| !v.is_empty()).map(Into::into)
}

/// A file in the state directory (see [`default_dir`]).
pub(crate) fn state_file(name: &str) -> Option<std::path::PathBuf> {
    default_dir(name)
}

impl CacheSettings {
    /// The budget in bytes.
    pub fn max_bytes(&self) -> usize {
        usize::try_from(self.max_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }

    /// The disk budget in bytes.
    pub fn max_disk_bytes(&self) -> u64 {
        self.max_disk_mb.saturating_mul(1 << 20)
    }

    /// The snapshot directory: `dir`, else the default for the environment (see `dir`); `None`
    /// when saving is off or no home directory is known.
    pub fn disk_dir(&self) -> Option<std::path::PathBuf> {
        if self.max_disk_mb == 0 || self.max_mb == 0 {
            return None;
        }
        self.dir.clone().or_else(|| default_dir("prefix"))
    }

    /// Where optimized ONNX Runtime sessions are saved, and their budget; `None` when off.
    pub fn optimized(&self) -> Option<qwenedge_engine::backend::ort::OptimizedCache> {
        if self.optimized_max_disk_mb == 0 {
            return None;
        }
        let dir = self.optimized_dir.clone().or_else(|| default_dir("optimized"))?;
        let max_bytes = self.optimized_max_disk_mb.saturating_mul(1 << 20);
        Some(qwenedge_engine::backend::ort::OptimizedCache { dir, max_bytes, room_bytes: None })
    }

    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.max_mb > 1 << 20 {
            return Err(("cache.max_mb".into(), format!("{} is more than 1048576 (1 TiB)", self.max_mb)));
        }
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty() || d.is_relative()) {
            return Err(("cache.dir".into(), "must be an absolute path".into()));
        }
        if self.optimized_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty() || d.is_relative()) {
            return Err(("cache.optimized_dir".into(), "must be an absolute path".into()));
        }
        if self.min_tokens == 0 {
            return Err(("cache.min_tokens".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}
