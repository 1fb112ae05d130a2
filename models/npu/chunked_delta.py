#!/usr/bin/env python3
"""The gated delta rule of Qwen3.5's linear-attention layers over a chunk of C tokens at once, in
standard ONNX ops (MatMul, Exp, Mul, Add, Sub, Reshape, Expand, Transpose, Slice): what a
static prefill graph for an NPU needs in place of com.microsoft's LinearAttention, which the QNN
execution provider does not take. Run as a script it checks the chunked form against ONNX
Runtime's own LinearAttention (token by token) on random inputs shaped like the fixtures' and the
0.8B model's heads, full and padded chunks, several chunks in a row with the state carried.

The rule, per value head, with state S [hk, hv], for tokens i = 1..C (q, k rows, v rows, log decay
g_i <= 0, beta_i in (0, 1)):

    S_i = exp(g_i) S_{i-1} + k_i u_i^T,   u_i = beta_i (v_i - exp(g_i) S_{i-1}^T k_i),   o_i = S_i^T q_i

With G = cumsum(g) (a MatMul with an upper-triangular matrix of ones), D_ij = exp(G_i - G_j)
for j <= i (the exponent summed directly, g_{j+1} + ... + g_i, as one MatMul with a constant
[C, C*C] matrix of ones: no difference of two long sums, and 0 above the diagonal, so nothing
overflows) and A_ij = beta_i (k_i . k_j) D_ij for j < i, unrolling gives
(I + A) U = beta * (V - exp(G) * K S), so

    U = (I + A)^-1 beta (V - exp(G) K S)
    O = exp(G) * Q S + ((Q K^T) * D) U
    S_C = exp(G_C) S + K^T (exp(G_C - G) * U)      (G_C - G_i summed directly too)

A is strictly lower triangular, so (I + A)^-1 = (I - A)(I + A^2)(I + A^4)... (log2 C factors,
MatMuls only). Padding a short prompt to C with g = 0 and beta = 0 leaves the state and the real
tokens' outputs as they are.

usage: chunked_delta.py [--chunk C]   (exit status 1 when a difference exceeds the tolerance)
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# The IR version written (what ONNX Runtime 1.2x reads; onnx's default may be newer).
IR_VERSION = 8

# The smallest log decay given to Exp: exp(-30) = 9e-14 is nothing beside 1 in fp32 and 0 in
# fp16, and the HTP's fp16 Exp (QNN 2.7.0's simulator) answers -100, -500 and -1000 with
# +-131008 instead of 0 (-20 to -60 give 0; a chunk's summed decays of a strongly decaying head
# reach -1000).
EXP_FLOOR = -30.0

# Max |difference| allowed between the chunked form and ONNX Runtime's token-by-token kernel (fp32).
TOLERANCE = 1e-4


class Builder:
    """Collects nodes and constants for one graph."""

    def __init__(self, prefix: str = "/chunked_delta"):
        self.prefix, self.nodes, self.consts, self.known = prefix, [], [], {}

    def const(self, value, dtype=np.int64) -> str:
        """A constant initializer; equal values share one (each layer asks for the same masks)."""
        array = np.array(value, dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.known:
            self.known[key] = f"{self.prefix}/const_{len(self.consts)}"
            self.consts.append(numpy_helper.from_array(array, self.known[key]))
        return self.known[key]

    def op(self, kind: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        name = f"{self.prefix}/{kind}_{len(self.nodes)}"
        out = out or f"{name}/output_0"
        self.nodes.append(helper.make_node(kind, inputs, [out], name=name, **attrs))
        return out

    def exp_decay(self, x: str) -> str:
        """exp(x) of a log decay (x <= 0), x clamped to EXP_FLOOR first."""
        return self.op("Exp", [self.op("Max", [x, self.const(EXP_FLOOR, np.float32)])])


def chunked_delta_rule(b: Builder, q: str, k: str, v: str, state: str, decay: str, beta: str, *,
                       nk: int, nv: int, hk: int, hv: int, chunk: int, scale: float,
                       out: str, state_out: str) -> None:
    """Nodes computing LinearAttention (gated delta, batch 1) over `chunk` tokens: q, k
    [1, C, nk*hk], v [1, C, nv*hv], state [1, nv, hk, hv], decay and beta [1, C, nv]; writes
    `out` [1, C, nv*hv] and `state_out` [1, nv, hk, hv]."""
    c, f32 = chunk, np.float32

    def heads(x, n, h, repeat):  # [1, C, n*h] -> [1, nv, C, h], key heads repeated to the value heads
        if repeat > 1:
            x = b.op("Expand", [b.op("Reshape", [x, b.const([1, c, n, 1, h])]), b.const([1, c, n, repeat, h])])
        x = b.op("Reshape", [x, b.const([1, c, nv, h])])
        return b.op("Transpose", [x], perm=[0, 2, 1, 3])

    qh, kh, vh = heads(q, nk, hk, nv // nk), heads(k, nk, hk, nv // nk), heads(v, nv, hv, 1)
    kt = b.op("Transpose", [kh], perm=[0, 1, 3, 2])                                 # [1, nv, hk, C]
    per_head = lambda x: b.op("Transpose", [x], perm=[0, 2, 1])                     # [1, C, nv] -> [1, nv, C]
    g_row = b.op("Reshape", [per_head(decay), b.const([1, nv, 1, c])])
    big_g_row = b.op("MatMul", [g_row, b.const(np.triu(np.ones((c, c))), f32)])    # cumsum: [1, nv, 1, C]
    big_g = b.op("Reshape", [big_g_row, b.const([1, nv, c, 1])])
    beta_col = b.op("Reshape", [per_head(beta), b.const([1, nv, c, 1])])
    # G_i - G_j summed directly (sum of g_l for j < l <= i, 0 above the diagonal), never as the
    # difference of two long sums: with strong decays those reach -1e3 and their difference
    # would keep only about 1e-4 of absolute precision in the exponent.
    between = np.zeros((c, c, c))
    for i in range(c):
        for j in range(i):
            between[j + 1 : i + 1, i, j] = 1.0
    spans = b.op("MatMul", [g_row, b.const(between.reshape(c, c * c), f32)])          # [1, nv, 1, C*C]
    decays = b.exp_decay(b.op("Reshape", [spans, b.const([1, nv, c, c])]))          # [1, nv, C, C]
    strict = b.op("Mul", [decays, b.const(np.tril(np.ones((c, c)), -1), f32)])
    inclusive = b.op("Mul", [decays, b.const(np.tril(np.ones((c, c))), f32)])

    # (I + A)^-1 as (I - A)(I + A^2)(I + A^4)...: A is nilpotent (A^C = 0).
    a = b.op("Mul", [b.op("Mul", [b.op("MatMul", [kh, kt]), strict]), beta_col])
    eye = b.const(np.eye(c), f32)
    n = b.op("Neg", [a])
    inverse = b.op("Add", [eye, n])
    for _ in range(max(0, math.ceil(math.log2(c)) - 1)):
        n = b.op("MatMul", [n, n])
        inverse = b.op("MatMul", [inverse, b.op("Add", [eye, n])])

    exp_g = b.exp_decay(big_g)
    residual = b.op("Mul", [beta_col, b.op("Sub", [vh, b.op("Mul", [exp_g, b.op("MatMul", [kh, state])])])])
    u = b.op("MatMul", [inverse, residual])                                         # [1, nv, C, hv]
    o = b.op("Add", [b.op("Mul", [exp_g, b.op("MatMul", [qh, state])]),
                     b.op("MatMul", [b.op("Mul", [b.op("MatMul", [qh, kt]), inclusive]), u])])
    if scale != 1.0:
        o = b.op("Mul", [o, b.const(scale, f32)])
    o = b.op("Transpose", [o], perm=[0, 2, 1, 3])
    b.op("Reshape", [o, b.const([1, c, nv * hv])], out)
    last = b.op("Slice", [big_g_row, b.const([c - 1]), b.const([c]), b.const([3])])  # G_C: [1, nv, 1, 1]
    after = b.op("MatMul", [g_row, b.const(np.tril(np.ones((c, c)), -1), f32)])      # G_C - G_i as sum of g_l, l > i
    tail = b.exp_decay(b.op("Reshape", [after, b.const([1, nv, c, 1])]))
    b.op("Add", [b.op("Mul", [b.exp_decay(last), state]), b.op("MatMul", [kt, b.op("Mul", [tail, u])])], state_out)


def graph_inputs(nk, nv, hk, hv, length):
    f = TensorProto.FLOAT
    return [helper.make_tensor_value_info("q", f, [1, length, nk * hk]), helper.make_tensor_value_info("k", f, [1, length, nk * hk]),
            helper.make_tensor_value_info("v", f, [1, length, nv * hv]), helper.make_tensor_value_info("state", f, [1, nv, hk, hv]),
            helper.make_tensor_value_info("decay", f, [1, length, nv]), helper.make_tensor_value_info("beta", f, [1, length, nv])]


def outputs(nv, hv, hk, length):
    f = TensorProto.FLOAT
    return [helper.make_tensor_value_info("out", f, [1, length, nv * hv]), helper.make_tensor_value_info("state_out", f, [1, nv, hk, hv])]


def reference_model(nk, nv, hk, hv, scale):
    """ONNX Runtime's own kernel, any length."""
    node = helper.make_node("LinearAttention", ["q", "k", "v", "state", "decay", "beta"], ["out", "state_out"], domain="com.microsoft",
                            q_num_heads=nk, kv_num_heads=nv, update_rule="gated_delta", scale=scale)
    g = helper.make_graph([node], "reference", graph_inputs(nk, nv, hk, hv, "S"), outputs(nv, hv, hk, "S"))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=IR_VERSION)


def chunked_model(nk, nv, hk, hv, chunk, scale):
    b = Builder()
    chunked_delta_rule(b, "q", "k", "v", "state", "decay", "beta", nk=nk, nv=nv, hk=hk, hv=hv, chunk=chunk, scale=scale,
                       out="out", state_out="state_out")
    g = helper.make_graph(b.nodes, "chunked", graph_inputs(nk, nv, hk, hv, chunk), outputs(nv, hv, hk, chunk), initializer=b.consts)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    assert all(n.domain == "" for n in model.graph.node), "standard ONNX only"
    return model


def random_tokens(rng, n, nk, nv, hk, hv, scale):
    """Inputs as the model makes them: q and k L2-normalised per head (q also scaled), the log
    decay negative (some near 0, some strong), beta a sigmoid."""
    def normalised(x):
        x = x.reshape(1, n, nk, hk)
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).reshape(1, n, nk * hk)
    q = normalised(rng.standard_normal((1, n, nk * hk))) * (hk ** -0.5 if scale == 1.0 else 1.0)
    k = normalised(rng.standard_normal((1, n, nk * hk)))
    v = rng.standard_normal((1, n, nv * hv))
    decay = -np.exp(rng.uniform(-6.0, 1.0, (1, n, nv)))
    beta = 1.0 / (1.0 + np.exp(-rng.standard_normal((1, n, nv))))
    return {name: x.astype(np.float32) for name, x in dict(q=q, k=k, v=v, decay=decay, beta=beta).items()}


def pad(tokens, chunk):
    """Pads to `chunk` tokens with decay 0 and beta 0 (the state passes through unchanged)."""
    n = tokens["q"].shape[1]
    return {name: np.concatenate([x, np.zeros((1, chunk - n, x.shape[2]), np.float32)], axis=1) for name, x in tokens.items()}


def check(shape_name, nk, nv, hk, hv, chunk, rng) -> float:
    import onnxruntime as ort

    scale = 1.0
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    reference = ort.InferenceSession(reference_model(nk, nv, hk, hv, scale).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    chunked = ort.InferenceSession(chunked_model(nk, nv, hk, hv, chunk, scale).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    # Three chunks in a row (the last one short and padded), the state carried from one to the next.
    lengths = [chunk, chunk, max(1, chunk // 3)]
    state_ref = (rng.standard_normal((1, nv, hk, hv)) * 0.1).astype(np.float32)
    state_chunked = state_ref.copy()
    for n in lengths:
        tokens = random_tokens(rng, n, nk, nv, hk, hv, scale)
        out_ref, state_ref = reference.run(None, dict(tokens, state=state_ref))
        out_c, state_chunked = chunked.run(None, dict(pad(tokens, chunk), state=state_chunked))
        d_out = float(np.max(np.abs(out_c[:, :n] - out_ref)))
        d_state = float(np.max(np.abs(state_chunked - state_ref)))
        worst = max(worst, d_out, d_state)
        print(f"{shape_name:>6} heads {nk}/{nv} of {hk}x{hv}, chunk {chunk}, {n:>3} tokens: "
              f"max |diff| output {d_out:.2e}, state {d_state:.2e}")
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunk", type=int, nargs="*", default=[16, 64])
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    shapes = [("tiny-a", 2, 4, 16, 16), ("tiny-b", 2, 2, 32, 16), ("0.8b", 16, 16, 128, 128)]
    worst = max(check(name, nk, nv, hk, hv, c, rng) for c in args.chunk for name, nk, nv, hk, hv in shapes)
    ok = worst <= TOLERANCE
    print(f"chunked delta rule vs ONNX Runtime's LinearAttention: worst {worst:.2e} ({'within' if ok else 'OVER'} {TOLERANCE:.0e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
