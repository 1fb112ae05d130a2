//! The RMS norms of the export, `SimplifiedLayerNormalization` and com.microsoft
//! `SkipSimplifiedLayerNormalization`, summed in the order ONNX Runtime's CPU kernels sum.
//!
//! The order matters beyond the last bit: an int4 `MatMulNBits` after the norm quantizes its
//! input to int8, and in the first layer (rows of dequantized embeddings, few distinct
//! magnitudes) many values land exactly on a rounding boundary, so a one-ulp difference in the
//! norm changes the integer and, with random weights, the greedy token.
//!
//! - `SimplifiedLayerNormalization` as MLAS's x86-64 vector kernel computes rows of at least 8:
//!   eight lanes of fused multiply-add, reduced as `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`,
//!   then `x * (1/rms) * weight`; shorter rows with one running sum and `x / rms * weight`.
//!   The same order on every architecture, so this backend gives the same tokens everywhere.
//! - `SkipSimplifiedLayerNormalization` (`s = input + skip`) uses one running sum of `s*s` and
//!   `s / rms * gamma`; its optional second output is `s`.

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::linear::{eval_op, kernel_op, typed_op};
use super::{built, f32s, tensor, Built, Kernel};

/// Whether ONNX Runtime's vector RMS-norm kernel handles rows of `n` values (on x86-64).
fn vector_kernel(n: usize) -> bool {
    n >= 8
}

/// The sum of squares of `x` as MLAS's eight-lane kernel forms it, or one running sum.
fn sum_of_squares(x: &[f32]) -> f32 {
    if !vector_kernel(x.len()) {
        return x.iter().fold(0f32, |s, v| s + v * v);
    }
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = v.mul_add(*v, *l);
        }
    }
    let r = [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
    let mut s = (r[0] + r[2]) + (r[1] + r[3]);
    for v in chunks.remainder() {
        s += v * v;
    }
    s
}

/// `SimplifiedLayerNormalization` over the last axis.
#[derive(Debug, Clone, PartialEq)]
pub struct SimplifiedLayerNorm {
    /// Added to the mean square.
    pub epsilon: f32,
}

impl Eq for SimplifiedLayerNorm {}

pub(super) fn simplified_layer_norm(_: &tract_onnx::model::ParsingContext, node: &NodeProto) -> Built {
    let name = &node.name;
    if !matches!(node.get_attr_opt::<i64>("axis")?.unwrap_or(-1), -1) {
        bail!("SimplifiedLayerNormalization node '{name}': only the last axis (-1) is supported");
    }
    if node.output.iter().skip(1).any(|o| !o.is_empty()) {
        bail!("SimplifiedLayerNormalization node '{name}': the inv_std_var output is not supported");
    }
    if node.input.len() != 2 {
        bail!("SimplifiedLayerNormalization node '{name}': expects X and scale");
    }
    built(SimplifiedLayerNorm { epsilon: node.get_attr_opt::<f32>("epsilon")?.unwrap_or(1e-5) })
}

impl SimplifiedLayerNorm {
    fn run(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        const OP: &str = "SimplifiedLayerNormalization";
        let (x, w) = (f32s(OP, inputs, 0)?, f32s(OP, inputs, 1)?);
        let n = w.len();
        if n == 0 || inputs[0].shape().last() != Some(&n) {
            bail!("{OP}: X {:?} and scale [{n}] do not agree", inputs[0].shape());
        }
        let mut y = vec![0f32; x.len()];
        for (xs, ys) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            let rms = (sum_of_squares(xs) / n as f32 + self.epsilon).sqrt();
            if vector_kernel(n) {
                let inv = 1.0 / rms;
                ys.iter_mut().zip(xs).zip(w).for_each(|((o, &v), &g)| *o = v * inv * g);
            } else {
                ys.iter_mut().zip(xs).zip(w).for_each(|((o, &v), &g)| *o = v / rms * g);
            }
        }
        Ok(tvec![tensor(inputs[0].shape(), y)?])
    }
}

kernel_op!(SimplifiedLayerNorm, "SimplifiedLayerNormalization");
eval_op!(SimplifiedLayerNorm);
typed_op!(SimplifiedLayerNorm, |_op, inputs| Ok(tvec![f32::fact(inputs[0].shape.clone())]));

impl Kernel for SimplifiedLayerNorm {
    const OUTPUTS: usize = 1;
    fn relate<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }
}

/// com.microsoft `SkipSimplifiedLayerNormalization`: outputs the norm of `input + skip` and
/// that sum (the residual stream of the next layer) when the node asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct SkipSimplifiedLayerNorm {
    /// Added to the mean square.
    pub epsilon: f32,
    /// Whether the `input_skip_bias_sum` output is wired.
    pub sum: bool,
}

impl Eq for SkipSimplifiedLayerNorm {}

pub(super) fn skip_simplified_layer_norm(_: &tract_onnx::model::ParsingContext, node: &NodeProto) -> Built {
    let name = &node.name;
    let wired = |ix: usize| node.output.get(ix).is_some_and(|o| !o.is_empty());
    if wired(1) || wired(2) {
        bail!("SkipSimplifiedLayerNormalization node '{name}': the mean and inv_std_var outputs are not supported");
    }
    if node.input.iter().skip(3).any(|i| !i.is_empty()) {
        bail!("SkipSimplifiedLayerNormalization node '{name}': the bias input is not supported");
    }
    if node.input.len() < 3 {
        bail!("SkipSimplifiedLayerNormalization node '{name}': expects input, skip and gamma");
    }
    built(SkipSimplifiedLayerNorm { epsilon: node.get_attr_opt::<f32>("epsilon")?.unwrap_or(1e-5), sum: wired(3) })
}

impl SkipSimplifiedLayerNorm {
    fn run(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        const OP: &str = "SkipSimplifiedLayerNormalization";
        let (x, skip, g) = (f32s(OP, inputs, 0)?, f32s(OP, inputs, 1)?, f32s(OP, inputs, 2)?);
        let n = g.len();
        if n == 0 || inputs[0].shape().last() != Some(&n) || skip.len() != x.len() {
            bail!("{OP}: input {:?}, skip {:?} and gamma [{n}] do not agree", inputs[0].shape(), inputs[1].shape());
        }
        let sum: Vec<f32> = x.iter().zip(skip).map(|(a, b)| a + b).collect();
        let mut y = vec![0f32; x.len()];
        for (ss, ys) in sum.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            let rms = (ss.iter().fold(0f32, |s, v| s + v * v) / n as f32 + self.epsilon).sqrt();
            ys.iter_mut().zip(ss).zip(g).for_each(|((o, &v), &w)| *o = v / rms * w);
        }
        let shape = inputs[0].shape();
        let mut out = tvec![tensor(shape, y)?];
        if self.sum {
            out.push(tensor(shape, sum)?);
        }
        Ok(out)
    }
}

kernel_op!(SkipSimplifiedLayerNorm, "SkipSimplifiedLayerNormalization");
eval_op!(SkipSimplifiedLayerNorm);
typed_op!(SkipSimplifiedLayerNorm, |op, inputs| Ok(tvec![f32::fact(inputs[0].shape.clone()); op.outputs()]));

impl Kernel for SkipSimplifiedLayerNorm {
    const OUTPUTS: usize = 2;
    fn outputs(&self) -> usize {
        1 + usize::from(self.sum)
    }
    fn relate<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        for o in outputs {
            s.equals(&o.datum_type, f32::datum_type())?;
            s.equals(&o.shape, &inputs[0].shape)?;
        }
        Ok(())
    }
}
