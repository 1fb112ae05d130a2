//! Memory arithmetic from the model's own files: what loading a model will take, what one
//! request's state will take, and how much room the device and the daemon's cgroup leave.

use serde::Serialize;

use super::readers::{self, SysRoot};

const MIB: f64 = 1024.0 * 1024.0;

/// Which runtime holds the model: they keep weights and activations differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Holder {
    /// ONNX Runtime with its optimized model (pre-packed weights) mapped from the cache, as the
    /// daemon loads it.
    OnnxRuntime,
    /// The pure-Rust tract backend.
    Tract,
}

/// What the factors below were measured on: the four Qwen3.5 Small sizes' full-width test
/// models (0.8B at full depth; 2B, 4B and 9B at four layers), int4, 2 threads, a 4096-token
/// context, peak RSS (`models/verify-sizes.sh`; every estimate within 5% of its measurement).
/// Resident bytes per stored `MatMulNBits` byte: ONNX Runtime keeps the pre-packed copy and the
/// scales it still reads; tract its own 4-bit layout and scales.
const MATMUL_FACTOR: [f64; 2] = [1.45, 1.12];
/// Resident MiB per layer beyond its weights (kernels, their buffers, the plan's steps).
const LAYER_MB: [f64; 2] = [1.5, 5.1];
/// The runtime itself (library, allocator, thread pool), MiB.
const RUNTIME_MB: [f64; 2] = [52.0, 0.0];
/// Prompt rows per forward pass (a longer prompt runs in several; see the backends).
const PASS_ROWS: [usize; 2] = [512, 256];
/// Live copies of the MLP's widest activation in a pass.
const WIDE_COPIES: f64 = 3.0;

/// The sizes of a model that its memory depends on (read from its files by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelShape {
    /// Weights as stored, in bytes.
    pub weight_bytes: u64,
    /// Of them, read whole by the 4-bit matrix products.
    pub matmul_bytes: u64,
    /// Of `matmul_bytes`, the LM head's (the rest belongs to the layers).
    pub head_bytes: u64,
    /// Of them, tables read a row at a time (embedding lookups).
    pub gathered_bytes: u64,
    /// Of `gathered_bytes`, large float32 tables that tract reads from the mapped file.
    pub gathered_large_f32_bytes: u64,
    /// Of them, rotary position caches (read a row per position).
    pub positional_bytes: u64,
    /// The rest of the weights.
    pub other_bytes: u64,
    /// Layers.
    pub layers: usize,
    /// Query heads of the full-attention layers.
    pub attention_heads: usize,
    /// The widest activation of a layer (elements per token).
    pub widest: usize,
    /// KV cache bytes per token of context.
    pub kv_bytes_per_token: usize,
    /// Fixed (linear-attention) state of one sequence, in bytes.
    pub fixed_state_bytes: usize,
    /// Vocabulary size (logits rows).
    pub vocab_size: usize,
    /// Size of `tokenizer.json`, in bytes.
    pub tokenizer_bytes: u64,
}

/// What loading a model and serving one request at the load context is expected to take, in
/// MiB.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelEstimate {
    /// The runtime the estimate is for.
    pub holder: Holder,
    /// Weights as stored.
    pub weights_mb: f64,
    /// Weights as the runtime holds them (tables read a row at a time from the mapped file
    /// count only as far as they are copied).
    pub runtime_weights_mb: f64,
    /// KV cache for a full context (tract holds a second copy while it steps).
    pub kv_mb: f64,
    /// Gated DeltaNet state of one sequence.
    pub state_mb: f64,
    /// Activations of one forward pass over a prompt at the full context.
    pub activations_mb: f64,
    /// The runtime, tokenizer tables and logits.
    pub working_mb: f64,
    /// Extra held only while the model loads (tract builds its plan with copies of the small
    /// weights).
    pub loading_mb: f64,
    /// Context length assumed.
    pub context_tokens: usize,
    /// The peak: the larger of loading and serving.
    pub total_mb: f64,
    /// Weights each layer stores, on average.
    pub layer_weights_mb: f64,
    /// What each layer adds to the peak at this context (weights as held, KV cache, state),
    /// on average: how a model of the same width but another depth differs.
    pub per_layer_mb: f64,
}

impl std::fmt::Display for ModelEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = match self.holder {
            Holder::OnnxRuntime => "ONNX Runtime",
            Holder::Tract => "tract",
        };
        write!(
            f,
            "about {:.0} MiB with {who} (weights {:.0} MiB as stored, {:.0} MiB as loaded; KV cache {:.0} MiB for {} tokens; state {:.0} MiB; activations {:.0} MiB; working set {:.0} MiB)",
            self.total_mb,
            self.weights_mb,
            self.runtime_weights_mb,
            self.kv_mb,
            self.context_tokens,
            self.state_mb,
            self.activations_mb,
            self.working_mb
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

/// Estimates the peak memory of a model of `shape` held by `holder` serving contexts of
/// `context_tokens`, from the factors above.
pub fn model_estimate(shape: &ModelShape, context_tokens: usize, holder: Holder) -> ModelEstimate {
    let h = holder as usize;
    let mb = |bytes: f64| bytes / MIB;
    let weights_mb = mb(shape.weight_bytes as f64);
    let layers_mb = LAYER_MB[h] * shape.layers as f64;
    let small = mb((shape.other_bytes) as f64);
    let copied_tables = match holder {
        // Tables ONNX Runtime maps: only the rows read are resident.
        Holder::OnnxRuntime => 0.0,
        Holder::Tract => mb((shape.positional_bytes + shape.gathered_bytes - shape.gathered_large_f32_bytes) as f64),
    };
    let runtime_weights_mb = MATMUL_FACTOR[h] * mb(shape.matmul_bytes as f64) + small + copied_tables + layers_mb;
    let kv_copies = if holder == Holder::Tract { 2.0 } else { 1.0 };
    let kv_mb = kv_copies * mb((shape.kv_bytes_per_token * context_tokens) as f64);
    let state_mb = mb(shape.fixed_state_bytes as f64);
    let rows = PASS_ROWS[h].min(context_tokens.max(1)) as f64;
    // Attention scores of a pass (heads × rows × context) and the MLP's widest activations.
    let activations_mb = mb(4.0 * rows * (shape.attention_heads * context_tokens) as f64 + WIDE_COPIES * 4.0 * rows * shape.widest as f64);
    // Tokenizer tables (~0.8× the JSON) and two logits rows.
    let working_mb = RUNTIME_MB[h] + mb(shape.tokenizer_bytes as f64) * 0.8 + mb((shape.vocab_size * 4 * 2) as f64);
    let loading_mb = match holder {
        Holder::OnnxRuntime => 0.0,
        Holder::Tract => 2.0 * mb(shape.positional_bytes as f64) + 0.1 * mb(shape.matmul_bytes as f64),
    };
    let held = runtime_weights_mb + working_mb;
    let serving = held + kv_mb + state_mb + activations_mb;
    let layers = shape.layers.max(1) as f64;
    let body = shape.matmul_bytes.saturating_sub(shape.head_bytes);
    let layer_weights_mb = mb((body + shape.other_bytes) as f64) / layers;
    let per_layer_mb = (MATMUL_FACTOR[h] * mb(body as f64) + small + kv_mb + state_mb) / layers + LAYER_MB[h];
    ModelEstimate {
        holder,
        weights_mb,
        runtime_weights_mb,
        kv_mb,
        state_mb,
        activations_mb,
        working_mb,
        loading_mb,
        context_tokens,
        total_mb: serving.max(held + loading_mb),
        layer_weights_mb,
        per_layer_mb,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes of the four sizes' test models (0.8B at full depth, the others at full width
    /// and four layers) as `qwenedge_runner::model_shape` reads them, and their peak RSS at a
    /// 4096-token context measured with each runtime (MiB; `models/verify-sizes.sh`).
    fn measured() -> Vec<(&'static str, ModelShape, f64, f64)> {
        let shape = |matmul, gathered, positional, other, layers, heads, widest, kv, state| ModelShape {
            weight_bytes: matmul + gathered + positional + other,
            matmul_bytes: matmul,
            head_bytes: 0,
            gathered_bytes: gathered,
            gathered_large_f32_bytes: gathered,
            positional_bytes: positional,
            other_bytes: other,
            layers,
            attention_heads: heads,
            widest,
            kv_bytes_per_token: kv,
            fixed_state_bytes: state,
            vocab_size: 248_320,
            tokenizer_bytes: 33_006_271,
        };
        vec![
            ("0.8B", shape(469_565_440, 0, 8_388_608, 4_795_648, 24, 8, 6144, 24_576, 20_201_472), 1017.0, 891.0),
            ("2B width", shape(460_718_080, 0, 67_108_864, 1_232_768, 4, 8, 6144, 4096, 3_366_912), 849.0, 741.0),
            ("4B width", shape(675_840_000, 0, 67_108_864, 2_554_112, 4, 16, 10_240, 8192, 6_586_368), 1248.0, 1010.0),
            ("9B width", shape(1_175_715_840, 4_068_474_880, 67_108_864, 3_789_056, 4, 16, 12_288, 8192, 6_586_368), 1936.0, 1640.0),
        ]
    }

    #[test]
    fn the_estimate_is_within_a_tenth_of_the_measured_peaks() {
        for (size, shape, ort, tract) in measured() {
            for (holder, peak) in [(Holder::OnnxRuntime, ort), (Holder::Tract, tract)] {
                let e = model_estimate(&shape, 4096, holder);
                let off = e.total_mb / peak - 1.0;
                assert!(
                    off.abs() <= 0.10,
                    "{size} {holder:?}: estimated {:.0} MiB, measured {peak:.0} ({:+.1}%): {e}",
                    e.total_mb,
                    off * 100.0
                );
            }
        }
    }

    #[test]
    fn a_mapped_table_is_not_counted_as_resident_and_the_context_costs_kv_and_attention() {
        let (_, nine, _, _) = measured().pop().unwrap();
        let ort = model_estimate(&nine, 4096, Holder::OnnxRuntime);
        assert!(ort.runtime_weights_mb < ort.weights_mb / 2.0, "the 3.9 GB embedding is read a row at a time: {ort}");
        let short = model_estimate(&nine, 512, Holder::OnnxRuntime);
        assert!(short.kv_mb * 8.0 - ort.kv_mb < 1e-6 && short.activations_mb < ort.activations_mb);
        let tract = model_estimate(&nine, 4096, Holder::Tract);
        assert_eq!(tract.kv_mb, 2.0 * ort.kv_mb, "tract copies the KV cache while it steps");
    }
}
