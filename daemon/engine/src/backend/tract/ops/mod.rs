//! The com.microsoft contrib operators that the onnxruntime-genai export of Qwen3.5 uses and
//! tract-onnx does not run as ONNX Runtime does, as tract ops registered with its ONNX loader:
//! the Gated DeltaNet ops and `MRotaryEmbedding` (absent from tract), `GroupQueryAttention`
//! (tract's cannot serve prefill and decode from one plan) and the 4-bit `MatMulNBits` /
//! `GatherBlockQuantized` (tract's round scales to float16 and do not quantize activations as
//! ONNX Runtime's `accuracy_level` 4 does, which changes greedy tokens), and the RMS norms
//! (summed in ONNX Runtime's order, which the int8 activations of `MatMulNBits` are sensitive to),
//! and this project's `MappedGather` (a lookup that reads its table from the mapped file).
//!
//! Each op is a plain kernel over `f32` tensors: a typed op that evaluates itself, wrapped in
//! [`Hir`] so the loader's shape inference sees its output shapes. The semantics follow ONNX
//! Runtime's CPU kernels; every op is checked against ONNX Runtime by the `tract` tests.

mod attention;
mod linear;
mod mapped;
mod norm;
mod quant;
mod rope;
mod workers;

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::Onnx;

pub use attention::GroupQueryAttention;
pub use linear::{CausalConvWithState, GatedRmsNorm, LinearAttention, LinearAttentionGate};
pub use mapped::MappedGather;
pub use norm::{SimplifiedLayerNorm, SkipSimplifiedLayerNorm};
pub use quant::{GatherBlockQuantized, MatMulNBits};
pub use rope::MRotaryEmbedding;
use workers::for_chunks;
pub use workers::Workers;

/// The operators this module adds (or replaces) in tract's ONNX loader.
pub const OPS: &[&str] = &[
    "CausalConvWithState",
    "GatedRMSNorm",
    "GatherBlockQuantized",
    "GroupQueryAttention",
    "LinearAttention",
    "LinearAttentionGate",
    "MappedGather",
    "MatMulNBits",
    "MRotaryEmbedding",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
];

/// Registers every op of [`OPS`] with `onnx`, replacing tract's own versions of those it has.
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert("CausalConvWithState", linear::causal_conv);
    onnx.op_register.insert("GatedRMSNorm", linear::gated_rms_norm);
    onnx.op_register.insert("GroupQueryAttention", attention::group_query_attention);
    onnx.op_register.insert("LinearAttention", linear::linear_attention);
    onnx.op_register.insert("LinearAttentionGate", linear::linear_attention_gate);
    onnx.op_register.insert("MRotaryEmbedding", rope::mrotary_embedding);
    onnx.op_register.insert("MatMulNBits", quant::mat_mul_nbits);
    onnx.op_register.insert("MappedGather", mapped::mapped_gather);
    onnx.op_register.insert("GatherBlockQuantized", quant::gather_block_quantized);
    onnx.op_register.insert("SimplifiedLayerNormalization", norm::simplified_layer_norm);
    onnx.op_register.insert("SkipSimplifiedLayerNormalization", norm::skip_simplified_layer_norm);
}

/// A kernel that evaluates itself and states its output shapes for the loader's inference.
pub(crate) trait Kernel: TypedOp + Clone {
    /// Number of outputs.
    const OUTPUTS: usize;

    /// Number of outputs of this instance (ops with optional outputs override it).
    fn outputs(&self) -> usize {
        Self::OUTPUTS
    }

    /// Shape and type relations between inputs and outputs.
    fn relate<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult;
}

/// Adapter from a [`Kernel`] to the loader's inference-level op.
#[derive(Debug, Clone)]
pub(crate) struct Hir<K>(pub K);

impl<K: Kernel> Expansion for Hir<K> {
    fn name(&self) -> StaticName {
        Op::name(&self.0)
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.outputs())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_output_arity(outputs, self.0.outputs())?;
        self.0.relate(s, inputs, outputs)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// The result type of an op builder registered with the loader.
pub(crate) type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// Wraps `kernel` for the loader.
pub(crate) fn built<K: Kernel>(kernel: K) -> Built {
    Ok((expand(Hir(kernel)), vec![]))
}

/// Fails unless `node` wires exactly the inputs in `present` (by position, `true` = set).
pub(crate) fn expect_inputs(node: &NodeProto, present: &[bool]) -> TractResult<()> {
    for (ix, name) in node.input.iter().enumerate() {
        let want = present.get(ix).copied().unwrap_or(false);
        if want == name.is_empty() {
            let what = if want { "is required" } else { "is not supported" };
            bail!("{} node '{}': input {ix} ({}) {what}", node.op_type, node.name, if name.is_empty() { "absent" } else { name });
        }
    }
    if let Some(ix) = present.iter().enumerate().skip(node.input.len()).find(|(_, p)| **p).map(|(i, _)| i) {
        bail!("{} node '{}': input {ix} is required", node.op_type, node.name);
    }
    Ok(())
}

/// The `f32` content of input `ix` of `op`.
pub(crate) fn f32s<'a>(op: &str, inputs: &'a [TValue], ix: usize) -> TractResult<&'a [f32]> {
    let t = inputs.get(ix).with_context(|| format!("{op}: input {ix} is missing"))?;
    if t.datum_type() != f32::datum_type() {
        bail!("{op}: input {ix} is {:?}; this kernel runs float32", t.datum_type());
    }
    t.try_as_plain_ram()?.as_slice::<f32>()
}

/// A tensor of `shape` over `data`.
pub(crate) fn tensor(shape: &[usize], data: Vec<f32>) -> TractResult<TValue> {
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), data)?.into_tensor().into_tvalue())
}

/// Rearranges per-head outputs `[B·H, T, D]` (head-major, as the attention kernels compute
/// them, one head per task) into the graph's `[B, T, H·D]`.
pub(crate) fn heads_to_rows(by_head: &[f32], heads: usize, t: usize, d: usize) -> Vec<f32> {
    let mut y = vec![0f32; by_head.len()];
    for (i, out) in by_head.chunks_exact(t * d).enumerate() {
        let (bi, h) = (i / heads, i % heads);
        for (ti, o) in out.chunks_exact(d).enumerate() {
            y[((bi * t + ti) * heads + h) * d..][..d].copy_from_slice(o);
        }
    }
    y
}

/// `Σ a·b` with eight partial sums (so that it vectorizes), added in a fixed order.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail
}

/// `x * sigmoid(x)`.
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `1 / (1 + exp(-x))`.
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
