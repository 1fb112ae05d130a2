//! Memory arithmetic from the model's own files: what loading a model will take, what one
//! request's state will take, and how much room the device and the daemon's cgroup leave.

use serde::Serialize;

use super::readers::{self, SysRoot};

/// ONNX Runtime repacks quantized weights for its CPU kernels; the packed form of an int4
/// `MatMulNBits` weight is about 1.3× the stored bytes (measured on the Qwen3.5-0.8B export).
pub const PACKED_WEIGHTS_FACTOR: f64 = 1.3;

const MIB: f64 = 1024.0 * 1024.0;

/// The sizes of a model that its memory depends on (read from its files by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelShape {
    /// Weights as stored, in bytes.
    pub weight_bytes: u64,
    /// KV cache bytes per token of context.
    pub kv_bytes_per_token: usize,
    /// Fixed (linear-attention) state of one sequence, in bytes.
    pub fixed_state_bytes: usize,
    /// Vocabulary size (logits rows).
    pub vocab_size: usize,
    /// Size of `tokenizer.json`, in bytes.
    pub tokenizer_bytes: u64,
}

/// What loading a model is expected to take, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelEstimate {
    /// Weights as stored.
    pub weights_mb: f64,
    /// Weights as the runtime holds them.
    pub runtime_weights_mb: f64,
    /// KV cache for a full context.
    pub kv_mb: f64,
    /// Gated DeltaNet state of one sequence.
    pub state_mb: f64,
    /// Tokenizer tables, logits and activations.
    pub working_mb: f64,
    /// Context length assumed.
    pub context_tokens: usize,
    /// Sum.
    pub total_mb: f64,
}

impl std::fmt::Display for ModelEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "about {:.0} MiB (weights {:.0} MiB as stored, {:.0} MiB as loaded; KV cache {:.0} MiB for {} tokens; state {:.0} MiB; working set {:.0} MiB)",
            self.total_mb, self.weights_mb, self.runtime_weights_mb, self.kv_mb, self.context_tokens, self.state_mb, self.working_mb
        )
    }
}

/// Context tokens assumed when the configuration leaves `model.context_length` at 0 (the
/// model's own, often 256k tokens, whose full KV cache alone would not fit a small board).
/// Longer requests are still served: each one is admitted against its own KV reservation.
pub const DEFAULT_LOAD_CONTEXT: usize = 4096;

/// The context the load-time estimate covers: the configured cap (`model.context_length`,
/// 0 = none) or [`DEFAULT_LOAD_CONTEXT`], never more than the model's own.
pub fn load_context(configured: usize, model: usize) -> usize {
    match configured {
        0 => DEFAULT_LOAD_CONTEXT.min(model),
        n => n.min(model),
    }
}

/// Estimates the memory of a model of `shape` serving contexts of `context_tokens`.
pub fn model_estimate(shape: &ModelShape, context_tokens: usize) -> ModelEstimate {
    let weights_mb = shape.weight_bytes as f64 / MIB;
    let runtime_weights_mb = weights_mb * PACKED_WEIGHTS_FACTOR;
    let kv_mb = (shape.kv_bytes_per_token * context_tokens) as f64 / MIB;
    let state_mb = shape.fixed_state_bytes as f64 / MIB;
    let tokenizer_mb = shape.tokenizer_bytes as f64 / MIB;
    // Tokenizer tables (~0.8× the JSON), two logits rows, hidden activations and the runtime.
    let working_mb = tokenizer_mb * 0.8 + (shape.vocab_size * 4 * 2) as f64 / MIB + 32.0;
    ModelEstimate {
        weights_mb,
        runtime_weights_mb,
        kv_mb,
        state_mb,
        working_mb,
        context_tokens,
        total_mb: runtime_weights_mb + kv_mb + state_mb + working_mb,
    }
}

/// Bytes one request needs beyond the loaded model: its KV cache and its linear state.
pub fn request_bytes(shape: &ModelShape, tokens: usize) -> u64 {
    (shape.kv_bytes_per_token * tokens + shape.fixed_state_bytes) as u64
}

/// Memory the daemon may still take (MiB), with the figures it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Room {
    /// min(MemAvailable, memory.max − memory.current) − reserve; `None` if nothing is readable.
    pub room_mb: Option<f64>,
    /// `MemAvailable`.
    pub available_mb: Option<f64>,
    /// `memory.max` of the daemon's cgroup.
    pub cgroup_max_mb: Option<f64>,
    /// `memory.current` of the daemon's cgroup.
    pub cgroup_current_mb: Option<f64>,
    /// Reserve kept free.
    pub reserve_mb: f64,
}

/// Reads the room under `root`.
pub fn room(root: &SysRoot, reserve_mb: u64) -> Room {
    let available = readers::meminfo(root).map(|m| m.available_mb);
    let cg = readers::cgroup_memory(root);
    let cgroup_max = cg.as_ref().and_then(|c| c.max_mb);
    let cgroup_current = cg.as_ref().and_then(|c| c.current_mb);
    let headroom = cgroup_max.map(|m| m - cgroup_current.unwrap_or(0.0));
    let free = match (available, headroom) {
        (Some(a), Some(h)) => Some(a.min(h)),
        (a, h) => a.or(h),
    };
    let reserve_mb = reserve_mb as f64;
    Room {
        room_mb: free.map(|f| f - reserve_mb),
        available_mb: available,
        cgroup_max_mb: cgroup_max,
        cgroup_current_mb: cgroup_current,
        reserve_mb,
    }
}

impl std::fmt::Display for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>| v.map_or("unknown".to_string(), |v| format!("{v:.0} MiB"));
        write!(
            f,
            "{} free for the daemon (MemAvailable {}, cgroup memory.max {}, memory.current {}, reserve {:.0} MiB)",
            opt(self.room_mb),
            opt(self.available_mb),
            opt(self.cgroup_max_mb),
            opt(self.cgroup_current_mb),
            self.reserve_mb
        )
    }
}
