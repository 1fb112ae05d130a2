//! The seam between the generation loop and whatever runs the graph.
//!
//! A [`Backend`] turns tokens plus a [`Sequence`]'s carried state into logits and the next
//! state. The loop in `engine::generate` only sees this trait, so a second runtime (a pure-Rust
//! one, a vendor NPU library) plugs in here without touching sampling, stopping or streaming.

pub mod ort;
pub mod plugins;
pub mod providers;
pub mod runtime;
pub mod select;
#[cfg(feature = "tract")]
pub mod tract;

use std::any::Any;

/// Which logits rows a forward pass should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// Only the last position (generation).
    Last,
    /// Every position of the chunk (parity checks, scoring).
    All,
}

/// Logits of one forward pass, row-major `[rows, vocab]`.
#[derive(Debug, Clone, Default)]
pub struct Logits {
    /// Number of rows (positions).
    pub rows: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// `rows * vocab` values.
    pub data: Vec<f32>,
}

impl Logits {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// The last row.
    pub fn last(&self) -> &[f32] {
        self.row(self.rows - 1)
    }
}

/// Per-sequence state carried between forward passes. Its content belongs to the backend that
/// created it; the generation loop only reads its length.
pub struct Sequence {
    pub(crate) len: usize,
    pub(crate) state: Box<dyn Any + Send>,
}

impl Sequence {
    /// Tokens already consumed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first forward pass.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A compact, immutable copy of a sequence's state after its first [`len`](Self::len) tokens:
/// the KV of the full-attention layers trimmed to those positions plus the fixed-size linear
/// state. Restoring it gives a sequence that continues exactly where the snapshot was taken.
pub struct Snapshot {
    pub(crate) len: usize,
    pub(crate) bytes: usize,
    pub(crate) state: Box<dyn Any + Send>,
}

impl Snapshot {
    /// Tokens the snapshot holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a snapshot of an empty sequence.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of state it keeps.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("len", &self.len).field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence").field("len", &self.len).finish_non_exhaustive()
    }
}

/// A failure inside a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The runtime library could not be found or loaded.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// Creating the session failed (bad graph, missing operator, out of memory).
    #[error("loading {path}: {msg}")]
    Load {
        /// The graph file.
        path: std::path::PathBuf,
        /// The runtime's message.
        msg: String,
    },
    /// A forward pass failed.
    #[error("inference failed: {0}")]
    Run(String),
    /// The request does not fit the model (e.g. longer than its context).
    #[error("{0}")]
    Limit(String),
    /// A sequence from another backend was passed in.
    #[error("sequence state does not belong to this backend")]
    ForeignState,
}

/// What a backend reports about itself for logs and `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendInfo {
    /// Backend name (`onnxruntime`).
    pub name: &'static str,
    /// Runtime library version.
    pub version: String,
    /// Where the runtime library was loaded from.
    pub library: Option<String>,
    /// The execution provider that runs first (`cpu` when no accelerator is active).
    pub execution_provider: String,
    /// What happened to each requested provider.
    pub providers: Vec<providers::ProviderReport>,
    /// Intra-op threads.
    pub threads: usize,
    /// Why this backend runs the model (`model.backend` and what `auto` found); empty when
    /// the caller built the backend itself.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub chosen: String,
    /// Which execution provider runs which nodes (ONNX Runtime only; the static backend's
    /// decode graph).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<ort::Placement>,
    /// The same for the static backend's prefill graph.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_placement: Option<ort::Placement>,
}

/// Runs a decoder graph step by step.
pub trait Backend: Send {
    /// Describes the backend.
    fn info(&self) -> BackendInfo;

    /// A fresh, empty sequence.
    fn new_sequence(&self) -> Result<Sequence, BackendError>;

    /// Feeds `tokens` after what `seq` already holds and writes the wanted logits to `out`.
    /// Errors that are detected before running (limits, foreign state) leave `seq` as it was;
    /// after a failed run the sequence refuses further steps (its state may be half-updated).
    fn forward(&mut self, seq: &mut Sequence, tokens: &[u32], want: LogitsWanted, out: &mut Logits) -> Result<(), BackendError>;

    /// An independent copy of `seq` (prefix snapshots).
    fn fork(&self, seq: &Sequence) -> Result<Sequence, BackendError>;

    /// A compact copy of `seq`'s state, holding only the positions it has consumed.
    fn snapshot(&self, seq: &Sequence) -> Result<Snapshot, BackendError>;

    /// A new sequence continuing from `snap`, with room for `room` more tokens before its
    /// buffers have to grow.
    fn restore(&self, snap: &Snapshot, room: usize) -> Result<Sequence, BackendError>;

    /// Hands `snap`'s state to `each` as flat arrays, always in the same order (to write it to
    /// disk).
    fn snapshot_parts(&self, snap: &Snapshot, each: &mut dyn FnMut(&[f32])) -> Result<(), BackendError>;

    /// A snapshot of `len` tokens from arrays in the order of
    /// [`snapshot_parts`](Self::snapshot_parts); refused when their number or sizes do not fit
    /// this model.
    fn snapshot_from_parts(&self, len: usize, parts: Vec<Vec<f32>>) -> Result<Snapshot, BackendError>;
}
