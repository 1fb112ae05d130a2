//! The Gated DeltaNet block of Qwen3.5 as ONNX Runtime's contrib ops: `CausalConvWithState`
//! (depthwise causal conv carrying its last `K-1` inputs), `LinearAttentionGate` (decay and
//! beta from the a/b projections), `LinearAttention` (the gated delta rule over a carried
//! recurrent state) and `GatedRMSNorm` (per-head RMS norm times `silu(gate)`).

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{built, expect_inputs, f32s, sigmoid, silu, tensor, Built, Kernel};

/// Implements `Op` for a kernel type: its name, and that it is a typed op.
macro_rules! kernel_op {
    ($t:ty, $name:literal) => {
        impl Op for $t {
            fn name(&self) -> StaticName {
                $name.into()
            }
            fn as_typed(&self) -> Option<&dyn TypedOp> {
                Some(self)
            }
        }
    };
}
pub(crate) use kernel_op;

/// Implements the boilerplate of `TypedOp` around an `output_facts` body.
macro_rules! typed_op {
    ($t:ty, |$self_:ident, $inputs:ident| $body:expr) => {
        impl TypedOp for $t {
            fn as_op(&self) -> &dyn Op {
                self
            }
            fn as_op_mut(&mut self) -> &mut dyn Op {
                self
            }
            fn output_facts(&self, $inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
                let $self_ = self;
                $body
            }
        }
    };
}
pub(crate) use typed_op;

/// Implements `EvalOp` by calling the kernel's `run`.
macro_rules! eval_op {
    ($t:ty) => {
        impl EvalOp for $t {
            fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
                self.run(&inputs)
            }
            fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
                Ok(Some(self.run(&inputs)?))
            }
        }
    };
}
pub(crate) use eval_op;

/// com.microsoft `CausalConvWithState`: `x [B, C, T]`, `weight [C, 1, K]`, optional
/// `bias [C]`, `past [B, C, K-1]` → `y [B, C, T]` (SiLU applied when `activation` is `silu`)
/// and `present [B, C, K-1]`, the last `K-1` inputs of `past ++ x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CausalConvWithState {
    /// Apply SiLU to the output.
    pub silu: bool,
    /// Whether the bias input is wired.
    pub bias: bool,
}

pub(super) fn causal_conv(_: &tract_onnx::model::ParsingContext, node: &NodeProto) -> Built {
    let silu = match node.get_attr_opt::<String>("activation")?.as_deref() {
        Some("silu") | Some("swish") => true,
        None | Some("none") | Some("") => false,
        Some(other) => bail!("CausalConvWithState node '{}': activation '{other}' is not supported", node.name),
    };
    if node.get_attr_opt::<i64>("ndim")?.unwrap_or(1) != 1 {
        bail!("CausalConvWithState node '{}': only ndim 1 is supported", node.name);
    }
    if node.get_attr_opt::<i64>("state_window")?.unwrap_or(0) != 0 {
        bail!("CausalConvWithState node '{}': state_window is not supported", node.name);
    }
    let bias = node.input.get(2).is_some_and(|s| !s.is_empty());
    expect_inputs(node, &[true, true, bias, true])?;
    built(CausalConvWithState { silu, bias })
}

impl CausalConvWithState {
    fn run(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        const OP: &str = "CausalConvWithState";
        let state_ix = if self.bias { 3 } else { 2 };
        let (x, w, past) = (f32s(OP, inputs, 0)?, f32s(OP, inputs, 1)?, f32s(OP, inputs, state_ix)?);
        let bias = if self.bias { Some(f32s(OP, inputs, 2)?) } else { None };
        let &[b, c, t] = inputs[0].shape() else { bail!("{OP}: input is not [B, C, T]: {:?}", inputs[0].shape()) };
        let k = match inputs[1].shape() {
            &[wc, 1, k] if wc == c && k >= 1 => k,
            s => bail!("{OP}: weight is {s:?}, expected [{c}, 1, K]"),
        };
        if inputs[state_ix].shape() != [b, c, k - 1] {
            bail!("{OP}: state is {:?}, expected [{b}, {c}, {}]", inputs[state_ix].shape(), k - 1);
        }
        if bias.is_some_and(|v| v.len() != c) {
            bail!("{OP}: bias is not [{c}]");
        }
        let mut y = vec![0f32; b * c * t];
        let mut present = vec![0f32; b * c * (k - 1)];
        let mut window = vec![0f32; k - 1 + t];
        for bc in 0..b * c {
            let ch = bc % c;
            window[..k - 1].copy_from_slice(&past[bc * (k - 1)..][..k - 1]);
            window[k - 1..].copy_from_slice(&x[bc * t..][..t]);
            let wk = &w[ch * k..][..k];
            let b0 = bias.map_or(0.0, |v| v[ch]);
            for (i, out) in y[bc * t..][..t].iter_mut().enumerate() {
                let acc = window[i..i + k].iter().zip(wk).fold(b0, |a, (x, w)| a + x * w);
                *out = if self.silu { silu(acc) } else { acc };
            }
            present[bc * (k - 1)..][..k - 1].copy_from_slice(&window[t..]);
        }
        Ok(tvec![tensor(&[b, c, t], y)?, tensor(&[b, c, k - 1], present)?])
    }
}

kernel_op!(CausalConvWithState, "CausalConvWithState");
eval_op!(CausalConvWithState);
typed_op!(CausalConvWithState, |op, inputs| {
    let state = inputs[if op.bias { 3 } else { 2 }];
    Ok(tvec![f32::fact(inputs[0].shape.clone()), f32::fact(state.shape.clone())])
});

impl Kernel for CausalConvWithState {
    const OUTPUTS: usize = 2;
    fn relate<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[1].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        s.equals(&outputs[1].shape, &inputs[if self.bias { 3 } else { 2 }].shape)
    }
}

/// com.microsoft `LinearAttentionGate`: `a`, `dt_bias [H]`, `decay_scale [H]`, `b` (each
/// `[..., H]`) → `decay = decay_scale * softplus(a + dt_bias)` (a log-decay) and
/// `beta = sigmoid(b)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearAttentionGate;

pub(super) fn linear_attention_gate(_: &tract_onnx::model::ParsingContext, node: &NodeProto) -> Built {
    expect_inputs(node, &[true, true, true, true])?;
    built(LinearAttentionGate)
}

impl LinearAttentionGate {
    fn run(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        const OP: &str = "LinearAttentionGate";
        let (a, dt, scale, b) = (f32s(OP, inputs, 0)?, f32s(OP, inputs, 1)?, f32s(OP, inputs, 2)?, f32s(OP, inputs, 3)?);
        let h = dt.len();
        if h == 0 || scale.len() != h || a.len() % h != 0 || b.len() != a.len() || inputs[0].shape().last() != Some(&h) {
            bail!("{OP}: a {:?}, dt_bias [{h}], decay_scale [{}], b {:?} do not agree", inputs[0].shape(), scale.len(), inputs[3].shape());
        }
        let softplus = |x: f32| if x > 20.0 { x } else { x.exp().ln_1p() };
        let decay = a.iter().enumerate().map(|(i, &x)| scale[i % h] * softplus(x + dt[i % h])).collect();
        let beta = b.iter().map(|&x| sigmoid(x)).collect();
        let shape = inputs[0].shape();
        Ok(tvec![tensor(shape, decay)?, tensor(shape, beta)?])
    }
}

kernel_op!(LinearAttentionGate, "LinearAttentionGate");
eval_op!(LinearAttentionGate);
typed_op!(LinearAttentionGate, |_op, inputs| Ok(tvec![f32::fact(inputs[0].shape.clone()), f32::fact(inputs[0].shape.clone())]));

impl Kernel for LinearAttentionGate {
    const OUTPUTS: usize = 2;
    fn relate<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        for o in outputs {
            s.equals(&o.datum_type, f32::datum_type())?;
            s.equals(&o.shape, &inputs[0].shape)?;
        }
        Ok(())
    }
}

/// com.microsoft `LinearAttention` with `update_rule = gated_delta`: `q`, `k [B, T, Hk*Dk]`,
/// `v [B, T, Hv*Dv]`, `past [B, Hv, Dk, Dv]`, `decay`, `beta [B, T, Hv]` → `y [B, T, Hv*Dv]` and
/// `present`. Per token and value head `h` (served by q/k head `h / (Hv/Hk)`):
/// `S *= exp(decay)`, `S += k ⊗ (beta * (v - kᵀS))`, `y = scale * qᵀS`. q and k are used as
/// given (the graph normalises them); `scale` 0 means `1/sqrt(Dk)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearAttention {
    /// Query/key heads.
    pub q_heads: usize,
    /// Value heads (and state heads).
    pub v_heads: usize,
    /// Output scale (0 = `1/sqrt(Dk)`).
    pub scale: f32,
    /// The threads that share the heads (set by the backend after loading; the calling thread
    /// alone when absent).
    pub workers: Option<super::Workers>,
}

impl Eq for LinearAttention {}

pub(super) fn linear_attention(_: &tract_onnx::model::ParsingContext, node: &NodeProto) -> Built {
    let rule = node.get_attr_opt::<String>("update_rule")?.unwrap_or_else(|| "gated_delta".into());
    if rule != "gated_delta" {
        bail!("LinearAttention node '{}': update_rule '{rule}' is not supported (only gated_delta)", node.name);
    }
    if node.get_attr_opt::<i64>("state_window")?.unwrap_or(0) != 0 {
        bail!("LinearAttention node '{}': state_window is not supported", node.name);
    }
    let q_heads: usize = node.get_attr("q_num_heads")?;
    let v_heads: usize = node.get_attr("kv_num_heads")?;
    if q_heads == 0 || v_heads == 0 || !v_heads.is_multiple_of(q_heads) {
        bail!("LinearAttention node '{}': kv_num_heads {v_heads} is not a multiple of q_num_heads {q_heads}", node.name);
    }
    let scale = node.get_attr_opt::<f32>("scale")?.unwrap_or(0.0);
    expect_inputs(node, &[true; 6])?;
    built(LinearAttention { q_heads, v_heads, scale, workers: None })
}

impl LinearAttention {
    fn run(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        const OP: &str = "LinearAttention";
        let (q, k, v, past) = (f32s(OP, inputs, 0)?, f32s(OP, inputs, 1)?, f32s(OP, inputs, 2)?, f32s(OP, inputs, 3)?);
        let (decay, beta) = (f32s(OP, inputs, 4)?, f32s(OP, inputs, 5)?);
        let (hk, hv) = (self.q_heads, self.v_heads);
        let &[b, t, qk_width] = inputs[0].shape() else { bail!("{OP}: q is not [B, T, Hk*Dk]: {:?}", inputs[0].shape()) };
        let &[sb, sh, dk, dv] = inputs[3].shape() else { bail!("{OP}: state is not [B, Hv, Dk, Dv]: {:?}", inputs[3].shape()) };
        if sb != b || sh != hv || qk_width != hk * dk || inputs[1].shape() != inputs[0].shape() || inputs[2].shape() != [b, t, hv * dv] {
            bail!(
                "{OP}: q {:?}, k {:?}, v {:?}, state {:?} do not agree with {hk} q/k heads and {hv} value heads",
                inputs[0].shape(),
                inputs[1].shape(),
                inputs[2].shape(),
                inputs[3].shape()
            );
        }
        if decay.len() != b * t * hv || beta.len() != b * t * hv {
            bail!("{OP}: decay {:?} / beta {:?} are not [{b}, {t}, {hv}]", inputs[4].shape(), inputs[5].shape());
        }
        let scale = if self.scale == 0.0 { 1.0 / (dk as f32).sqrt() } else { self.scale };
        let group = hv / hk;
        let mut state = past.to_vec();
        // Each (sequence, head) runs on its own: its state, and its outputs head-major.
        let mut by_head = vec![0f32; b * hv * t * dv];
        let mut heads: Vec<(&mut [f32], &mut [f32])> = state.chunks_mut(dk * dv).zip(by_head.chunks_mut(t * dv)).collect();
        let run = |first: usize, heads: &mut [(&mut [f32], &mut [f32])]| {
            let mut delta = vec![0f32; dv];
            for (i, (s, out)) in heads.iter_mut().enumerate() {
                let (bi, h) = ((first + i) / hv, (first + i) % hv);
                for (ti, out) in out.chunks_exact_mut(dv).enumerate() {
                    let row = bi * t + ti;
                    let qh = &q[(row * hk + h / group) * dk..][..dk];
                    let kh = &k[(row * hk + h / group) * dk..][..dk];
                    let vh = &v[(row * hv + h) * dv..][..dv];
                    step(s, qh, kh, vh, decay[row * hv + h].exp(), beta[row * hv + h], scale, &mut delta, out);
                }
            }
        };
        super::for_chunks(self.workers.as_ref(), &mut heads, 1, run);
        drop(heads);
        let y = super::heads_to_rows(&by_head, hv, t, dv);
        Ok(tvec![tensor(&[b, t, hv * dv], y)?, tensor(&[b, hv, dk, dv], state)?])
    }
}

/// One token of one head: decays the state `s [Dk, Dv]` by `g`, applies the delta rule with
/// `beta`, and writes `scale · qᵀS` to `out`.
#[allow(clippy::too_many_arguments)]
fn step(s: &mut [f32], q: &[f32], k: &[f32], v: &[f32], g: f32, beta: f32, scale: f32, delta: &mut [f32], out: &mut [f32]) {
    let dv = v.len();
    s.iter_mut().for_each(|x| *x *= g);
    delta.copy_from_slice(v);
    for (i, &ki) in k.iter().enumerate() {
        for (d, &sv) in delta.iter_mut().zip(&s[i * dv..][..dv]) {
            *d -= ki * sv;
        }
    }
    delta.iter_mut().for_each(|d| *d *= beta);
    for (i, (&ki, &qi)) in k.iter().zip(q).enumerate() {
        for ((sv, &d), o) in s[i * dv..][..dv].iter_mut().zip(&*delta).zip(out.iter_mut()) {
            *sv += ki * d;
            *o += qi * *sv;
        }
    }
    out.iter_mut().for_each(|o| *o *= scale);
}

kernel_op!(LinearAttention, "LinearAttention");
eval_op!(LinearAttention);
typed_op!(LinearAttention, |_op, inputs| Ok(tvec![f32::fact(inputs[2].shape.clone()), f32::fact(inputs[3].shape.clone())]));

impl Kernel for LinearAttention {
    const OUTPUTS: usize = 2;
    fn relate<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[1].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[2].shape)?;
        s.equals(&outputs[1].shape, &inputs[3].shape)
    }
}

/// com.microsoft `GatedRMSNorm`: `x [..., N*D]`, `weight [D]`, `gate` shaped like `x` →
/// `rmsnorm(x per group of D) * weight * silu(gate)`.
#[derive(Debug, Clone, PartialEq)]
pub struct GatedRmsNorm {
    /// Added to the mean square.
    pub epsilon: f32,
}

impl Eq for GatedRmsNorm {}

pub(super) fn gated_rms_norm(_: &tract_onnx::model::ParsingContext, node: &NodeProto) -> Built {
    expect_inputs(node, &[true, true, true])?;
    built(GatedRmsNorm { epsilon: node.get_attr_opt::<f32>("epsilon")?.unwrap_or(1e-5) })
}

impl GatedRmsNorm {
    fn run(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        const OP: &str = "GatedRMSNorm";
        let (x, w, z) = (f32s(OP, inputs, 0)?, f32s(OP, inputs, 1)?, f32s(OP, inputs, 2)?);
        let d = w.len();
        if d == 0 || x.len() % d != 0 || z.len() != x.len() || inputs[0].shape().last().is_none_or(|n| n % d != 0) {
            bail!("{OP}: x {:?}, weight [{d}], gate {:?} do not agree", inputs[0].shape(), inputs[2].shape());
        }
        let mut y = vec![0f32; x.len()];
        for ((xs, zs), ys) in x.chunks_exact(d).zip(z.chunks_exact(d)).zip(y.chunks_exact_mut(d)) {
            let inv = 1.0 / (xs.iter().map(|v| v * v).sum::<f32>() / d as f32 + self.epsilon).sqrt();
            for (((o, &xv), &zv), &wv) in ys.iter_mut().zip(xs).zip(zs).zip(w) {
                *o = xv * inv * wv * silu(zv);
            }
        }
        Ok(tvec![tensor(inputs[0].shape(), y)?])
    }
}

kernel_op!(GatedRmsNorm, "GatedRMSNorm");
eval_op!(GatedRmsNorm);
typed_op!(GatedRmsNorm, |_op, inputs| Ok(tvec![f32::fact(inputs[0].shape.clone())]));

impl Kernel for GatedRmsNorm {
    const OUTPUTS: usize = 1;
    fn relate<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }
}
