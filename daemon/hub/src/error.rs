//! The one error type of the Hub client and the model store: each variant is one line a user
//! can act on, naming the repository, file or directory concerned.

use std::path::PathBuf;

/// What went wrong while pulling, listing or removing a model.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A name that is not `owner/name` (optionally `:variant`).
    #[error("'{0}' is not a Hub repository name (owner/name, e.g. onnx-community/Qwen3.5-0.8B-ONNX-OPT)")]
    BadName(String),
    /// The Hub answered 404 for the repository or revision.
    #[error("{repo}: no such {what} on {endpoint}{hint}")]
    NotFound { repo: String, what: String, endpoint: String, hint: String },
    /// The Hub refused the request (401/403): private or gated repository, or a bad token.
    #[error("{repo}: the Hub refused access ({status}){hint}")]
    Refused { repo: String, status: u16, hint: String },
    /// The repository holds no model this engine reads, or not the requested variant.
    #[error("{repo}: {why}")]
    NoVariant { repo: String, why: String },
    /// Any other HTTP answer or transfer failure.
    #[error("{url}: {why}")]
    Http { url: String, why: String },
    /// A downloaded file's checksum differs from the Hub's.
    #[error("{path}: {algorithm} is {actual}, the Hub lists {expected}: the download was removed; pull again")]
    Checksum { path: String, algorithm: &'static str, expected: String, actual: String },
    /// The downloaded files do not load as a model (the engine's reader says why).
    #[error("{repo}: the downloaded files do not load: {why}")]
    Unloadable { repo: String, why: String },
    /// Another pull of the same model holds the store's lock.
    #[error("{0}: another pull of this model is running")]
    Busy(String),
    /// A file or directory of the store.
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
    /// `rm` of a model the store does not hold.
    #[error("{0}: not in the model store (qwenedge model list shows what is)")]
    NotStored(String),
}

impl HubError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Self::Io { path: path.into(), why: e.to_string() }
    }

    pub(crate) fn http(url: &str, why: impl std::fmt::Display) -> Self {
        Self::Http { url: url.to_string(), why: why.to_string() }
    }
}
