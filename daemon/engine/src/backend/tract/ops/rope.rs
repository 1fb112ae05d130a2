//! com.microsoft `MRotaryEmbedding`: multimodal rotary embedding over `x [B, S, N*H]` with one
//! position stream per section (`position_ids [3, B, S]`), rotating the first
//! `rotary_embedding_dim` channels of each head in halves (non-interleaved).
//!
//! Rotary frequency `j` reads its position from stream `0`, `1` or `2`: with `mrope_layout`
//! 0 the streams own consecutive runs of `mrope_section[i]` frequencies; with layout 1
//! (interleaved, Qwen3-VL/Qwen3.5) frequency `j` belongs to stream 1 when `j % 3 == 1` and
//! `j < 3 * mrope_section[1]`, to stream 2 when `j % 3 == 2` and `j < 3 * mrope_section[2]`,
//! else to stream 0.

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::linear::{eval_op, kernel_op, typed_op};
use super::{built, expect_inputs, f32s, tensor, Built, Kernel};

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MRotaryEmbedding {
    /// Heads in the last axis of the input.
    pub num_heads: usize,
    /// Rotated channels per head (0 = twice the cache width).
    pub rotary_dim: usize,
    /// Which position stream each rotary frequency reads.
    pub streams: Vec<usize>,
}

pub(super) fn mrotary_embedding(_: &tract_onnx::model::ParsingContext, node: &NodeProto) -> Built {
    let name = &node.name;
    if node.get_attr_opt::<i64>("interleaved")?.unwrap_or(0) != 0 {
        bail!("MRotaryEmbedding node '{name}': interleaved rotation is not supported");
    }
    if node.get_attr_opt::<i64>("is_packed_batching")?.unwrap_or(0) != 0 {
        bail!("MRotaryEmbedding node '{name}': packed batching is not supported");
    }
    let num_heads: usize = node.get_attr("num_heads")?;
    let rotary_dim: usize = node.get_attr_opt("rotary_embedding_dim")?.unwrap_or(0);
    let sections: Vec<usize> = node.get_attr_vec("mrope_section")?;
    let layout = node.get_attr_opt::<i64>("mrope_layout")?.unwrap_or(0);
    if num_heads == 0 || sections.len() != 3 {
        bail!("MRotaryEmbedding node '{name}': needs num_heads > 0 and three mrope_section entries");
    }
    let half: usize = sections.iter().sum();
    if rotary_dim != 0 && rotary_dim != 2 * half {
        bail!("MRotaryEmbedding node '{name}': mrope_section sums to {half}, not half of rotary_embedding_dim {rotary_dim}");
    }
    let streams = match layout {
        0 => sections.iter().enumerate().flat_map(|(i, &n)| std::iter::repeat_n(i, n)).collect(),
        1 => (0..half)
            .map(|j| match j % 3 {
                1 if j < 3 * sections[1] => 1,
                2 if j < 3 * sections[2] => 2,
                _ => 0,
            })
            .collect(),
        other => bail!("MRotaryEmbedding node '{name}': mrope_layout {other} is not supported"),
    };
    expect_inputs(node, &[true, true, true, true])?;
    built(MRotaryEmbedding { num_heads, rotary_dim: 2 * half, streams })
}

impl MRotaryEmbedding {
    fn run(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        const OP: &str = "MRotaryEmbedding";
        let (x, cos, sin) = (f32s(OP, inputs, 0)?, f32s(OP, inputs, 2)?, f32s(OP, inputs, 3)?);
        let pos_t = inputs[1].cast_to::<i64>()?;
        let pos = pos_t.try_as_plain_ram()?.as_slice::<i64>()?;
        let &[b, s, width] = inputs[0].shape() else { bail!("{OP}: input is not [B, S, N*H]: {:?}", inputs[0].shape()) };
        let (n, half) = (self.num_heads, self.rotary_dim / 2);
        let h = width / n;
        if width % n != 0 || self.rotary_dim > h {
            bail!("{OP}: width {width} does not hold {n} heads of at least {} channels", self.rotary_dim);
        }
        if inputs[1].shape() != [3, b, s] {
            bail!("{OP}: position_ids is {:?}, expected [3, {b}, {s}]", inputs[1].shape());
        }
        let &[rows, cw] = inputs[2].shape() else { bail!("{OP}: cos_cache is not [max_pos, rotary_dim/2]") };
        if cw != half || inputs[3].shape() != [rows, cw] {
            bail!("{OP}: caches are {:?}/{:?}, expected [*, {half}]", inputs[2].shape(), inputs[3].shape());
        }
        let mut y = x.to_vec();
        let (mut c, mut sn) = (vec![0f32; half], vec![0f32; half]);
        for bs in 0..b * s {
            for (j, &stream) in self.streams.iter().enumerate() {
                let p = pos[stream * b * s + bs];
                let p = usize::try_from(p)
                    .ok()
                    .filter(|&p| p < rows)
                    .with_context(|| format!("{OP}: position {p} is outside the {rows}-row cache"))?;
                c[j] = cos[p * half + j];
                sn[j] = sin[p * half + j];
            }
            for head in y[bs * width..][..width].chunks_exact_mut(h) {
                let (lo, hi) = head[..2 * half].split_at_mut(half);
                for j in 0..half {
                    let (a, b2) = (lo[j], hi[j]);
                    lo[j] = a * c[j] - b2 * sn[j];
                    hi[j] = b2 * c[j] + a * sn[j];
                }
            }
        }
        Ok(tvec![tensor(inputs[0].shape(), y)?])
    }
}

kernel_op!(MRotaryEmbedding, "MRotaryEmbedding");
eval_op!(MRotaryEmbedding);
typed_op!(MRotaryEmbedding, |_op, inputs| Ok(tvec![f32::fact(inputs[0].shape.clone())]));

impl Kernel for MRotaryEmbedding {
    const OUTPUTS: usize = 1;
    fn relate<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }
}
