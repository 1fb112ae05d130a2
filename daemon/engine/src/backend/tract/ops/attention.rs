//! com.microsoft `GroupQueryAttention` for any step: a prompt, one decoded token, or a chunk of
//! several tokens after a non-empty cache (chunked prefill, a restored prefix). tract-onnx's own
//! version wires prefill and decode differently and cannot serve both from one plan with a
//! symbolic sequence length, so this kernel replaces it.
//!
//! `q [B, S, Nq*D]`, `k`, `v [B, S, Nkv*D]`, `past_key`, `past_value [B, Nkv, P, D]`,
//! `seqlens_k [B]` (`P + S - 1`), `total_sequence_length` → `y [B, S, Nq*D]` and
//! `present_key`, `present_value [B, Nkv, P + S, D]` (the past followed by this step's keys and
//! values). Query `i` sits at position `P + i` and attends keys `0..=P + i`; query head `h`
//! reads KV head `h / (Nq / Nkv)`.

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::linear::{eval_op, kernel_op, typed_op};
use super::{built, expect_inputs, f32s, tensor, Built, Kernel};

/// See the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupQueryAttention {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Softmax scale (0 = `1/sqrt(D)`).
    pub scale: f32,
    /// Whether past key/value are wired.
    pub past: bool,
    /// The threads that share the query heads (set by the backend after loading; the calling
    /// thread alone when absent).
    pub workers: Option<super::Workers>,
}

impl Eq for GroupQueryAttention {}

pub(super) fn group_query_attention(_: &tract_onnx::model::ParsingContext, node: &NodeProto) -> Built {
    let name = &node.name;
    let heads: usize = node.get_attr("num_heads")?;
    let kv_heads: usize = node.get_attr("kv_num_heads")?;
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        bail!("GroupQueryAttention node '{name}': num_heads {heads} is not a multiple of kv_num_heads {kv_heads}");
    }
    for (attr, default) in [("do_rotary", 0), ("smooth_softmax", 0), ("qk_output", 0)] {
        if node.get_attr_opt::<i64>(attr)?.unwrap_or(default) != 0 {
            bail!("GroupQueryAttention node '{name}': {attr} is not supported");
        }
    }
    if node.get_attr_opt::<i64>("local_window_size")?.unwrap_or(-1) > 0 {
        bail!("GroupQueryAttention node '{name}': local_window_size is not supported");
    }
    if node.get_attr_opt::<f32>("softcap")?.unwrap_or(0.0) != 0.0 {
        bail!("GroupQueryAttention node '{name}': softcap is not supported");
    }
    let past = node.input.get(3).is_some_and(|s| !s.is_empty());
    expect_inputs(node, &[true, true, true, past, past, true, true])?;
    built(GroupQueryAttention { heads, kv_heads, scale: node.get_attr_opt::<f32>("scale")?.unwrap_or(0.0), past, workers: None })
}

impl GroupQueryAttention {
    fn run(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        const OP: &str = "GroupQueryAttention";
        let (q, k, v) = (f32s(OP, inputs, 0)?, f32s(OP, inputs, 1)?, f32s(OP, inputs, 2)?);
        let (nq, nkv) = (self.heads, self.kv_heads);
        let &[b, s, qw] = inputs[0].shape() else { bail!("{OP}: query is not [B, S, N*D]: {:?}", inputs[0].shape()) };
        let d = qw / nq;
        if qw % nq != 0 || inputs[1].shape() != [b, s, nkv * d] || inputs[2].shape() != [b, s, nkv * d] {
            bail!(
                "{OP}: query {:?}, key {:?}, value {:?} do not fit {nq}/{nkv} heads",
                inputs[0].shape(),
                inputs[1].shape(),
                inputs[2].shape()
            );
        }
        let (pk, pv, p) = if self.past {
            let p = match inputs[3].shape() {
                &[pb, ph, p, pd] if pb == b && ph == nkv && pd == d => p,
                other => bail!("{OP}: past_key is {other:?}, expected [{b}, {nkv}, P, {d}]"),
            };
            if inputs[4].shape() != inputs[3].shape() {
                bail!("{OP}: past_value {:?} differs from past_key {:?}", inputs[4].shape(), inputs[3].shape());
            }
            (f32s(OP, inputs, 3)?, f32s(OP, inputs, 4)?, p)
        } else {
            (&[][..], &[][..], 0)
        };
        let total = p + s;
        let lens_ix = if self.past { 5 } else { 3 };
        let lens = inputs[lens_ix].cast_to::<i64>()?;
        let lens = lens.try_as_plain_ram()?.as_slice::<i64>()?.to_vec();
        if lens.len() != b || lens.iter().any(|&l| l + 1 != total as i64) {
            bail!("{OP}: seqlens_k {lens:?} does not say {total} tokens per sequence (padded batches are not supported)");
        }
        let present = |past: &[f32], new: &[f32]| {
            let mut out = vec![0f32; b * nkv * total * d];
            for bi in 0..b {
                for h in 0..nkv {
                    let dst = &mut out[(bi * nkv + h) * total * d..][..total * d];
                    dst[..p * d].copy_from_slice(&past[(bi * nkv + h) * p * d..][..p * d]);
                    for t in 0..s {
                        dst[(p + t) * d..][..d].copy_from_slice(&new[((bi * s + t) * nkv + h) * d..][..d]);
                    }
                }
            }
            out
        };
        let (kk, vv) = (present(pk, k), present(pv, v));
        let scale = if self.scale == 0.0 { 1.0 / (d as f32).sqrt() } else { self.scale };
        // Each (sequence, query head) runs on its own, its outputs head-major.
        let mut by_head = vec![0f32; b * nq * s * d];
        let run = |at: usize, outs: &mut [f32]| {
            let mut w = vec![0f32; total];
            for (i, out) in outs.chunks_exact_mut(s * d).enumerate() {
                let (bi, h) = ((at / (s * d) + i) / nq, (at / (s * d) + i) % nq);
                let kvh = bi * nkv + h / (nq / nkv);
                let (keys, values) = (&kk[kvh * total * d..][..total * d], &vv[kvh * total * d..][..total * d]);
                for (t, out) in out.chunks_exact_mut(d).enumerate() {
                    let qv = &q[((bi * s + t) * nq + h) * d..][..d];
                    attend(qv, &keys[..(p + t + 1) * d], &values[..(p + t + 1) * d], scale, &mut w, out);
                }
            }
        };
        super::for_chunks(self.workers.as_ref(), &mut by_head, s * d, run);
        let y = super::heads_to_rows(&by_head, nq, s, d);
        Ok(tvec![tensor(&[b, s, qw], y)?, tensor(&[b, nkv, total, d], kk)?, tensor(&[b, nkv, total, d], vv)?])
    }
}

/// Softmax attention of one query `q [D]` over `keys`, `values [n, D]` into `out [D]`
/// (`w`: room for `n` weights).
fn attend(q: &[f32], keys: &[f32], values: &[f32], scale: f32, w: &mut [f32], out: &mut [f32]) {
    let d = q.len();
    let w = &mut w[..keys.len() / d];
    let mut max = f32::NEG_INFINITY;
    for (wj, key) in w.iter_mut().zip(keys.chunks_exact(d)) {
        *wj = super::dot(key, q) * scale;
        max = max.max(*wj);
    }
    let mut sum = 0f32;
    for wj in w.iter_mut() {
        *wj = (*wj - max).exp();
        sum += *wj;
    }
    for (wj, value) in w.iter().zip(values.chunks_exact(d)) {
        let a = wj / sum;
        for (o, x) in out.iter_mut().zip(value) {
            *o += a * x;
        }
    }
}

kernel_op!(GroupQueryAttention, "GroupQueryAttention");
eval_op!(GroupQueryAttention);
typed_op!(GroupQueryAttention, |op, inputs| {
    let k = &inputs[1].shape;
    let past = if op.past { inputs[3].shape[2].clone() } else { 0.to_dim() };
    let present = f32::fact([k[0].clone(), op.kv_heads.to_dim(), past + k[1].clone(), k[2].clone() / op.kv_heads]);
    Ok(tvec![f32::fact(inputs[0].shape.clone()), present.clone(), present])
});

impl Kernel for GroupQueryAttention {
    const OUTPUTS: usize = 3;
    fn relate<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        for o in outputs {
            s.equals(&o.datum_type, f32::datum_type())?;
        }
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        let kvh = self.kv_heads;
        for out in &outputs[1..3] {
            if self.past {
                s.given_2(&inputs[1].shape, &inputs[3].shape, move |s, ks, ps| {
                    s.equals(&out.shape, tvec![ks[0].clone(), kvh.to_dim(), ps[2].clone() + ks[1].clone(), ks[2].clone() / kvh])
                })?;
            } else {
                s.given(&inputs[1].shape, move |s, ks| {
                    s.equals(&out.shape, tvec![ks[0].clone(), kvh.to_dim(), ks[1].clone(), ks[2].clone() / kvh])
                })?;
            }
        }
        Ok(())
    }
}
