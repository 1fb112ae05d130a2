//! The models the APIs may load by name and Ollama's `/api/pull` may fetch: the daemon's model
//! store behind a trait that the binary implements with the Hub client, so this transport
//! carries no download code. A pull runs on its own thread and reports on a bounded channel.

use std::path::PathBuf;
use std::time::SystemTime;

use tokio::sync::mpsc;

/// A complete model in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredModel {
    /// Its name (`onnx-community/Qwen3.5-0.8B-ONNX-OPT:q4`).
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The variant to load from it (`None` for a directory of one model).
    pub variant: Option<String>,
    /// Bytes of its files.
    pub bytes: u64,
    /// When it was pulled.
    pub modified: SystemTime,
    /// The commit it came from (Ollama's digest).
    pub commit: String,
}

/// One step of a pull, in Ollama's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullUpdate {
    /// A phase (`pulling manifest`, `verifying sha256 digest`, `writing manifest`).
    Status(String),
    /// Bytes of one file: `digest` is its checksum (`sha256:…`).
    File { digest: String, total: u64, completed: u64 },
    /// Installed; the last update.
    Success,
    /// Failed, with a line saying why; the last update.
    Failed(String),
}

/// The store as the HTTP APIs see it.
pub trait ModelStore: Send + Sync {
    /// The stored model `name` stands for (its own name, `owner/name` with or without a
    /// variant, or an alias).
    fn find(&self, name: &str) -> Option<StoredModel>;
    /// Every stored model.
    fn list(&self) -> Vec<StoredModel>;
    /// Starts pulling `name`; `Err` says why it cannot be pulled (an unknown name, pulls off).
    fn pull(&self, name: &str) -> Result<mpsc::Receiver<PullUpdate>, String>;
}
