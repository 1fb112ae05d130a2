#!/usr/bin/env python3
"""The other two com.microsoft operators of a Qwen3.5 export over a chunk of C tokens in standard
ONNX, for a static prefill graph (chunked_delta.py has the gated delta rule):

  CausalConvWithState (SiLU, 1-D)  -> Concat(state, x), the K taps as K shifted Slices times the
                                      weight's columns, bias, SiLU; the new state is the K-1 inputs
                                      before the chunk's last real token (a Gather at `valid`, an
                                      int64 [1] input: a padded chunk leaves the padding out)
  MRotaryEmbedding (text only)     -> Gather of the cos/sin rows at each position, rotate-half on
                                      the rotary dims (the three position rows are equal for text)

Run as a script it checks both against ONNX Runtime's own kernels on random inputs shaped like
the fixtures' and the 0.8B model's layers: full and padded chunks, the conv state carried over
three chunks, positions deep in a long context.

usage: chunked_conv_rope.py [--chunk C ...]   (exit status 1 when a difference exceeds the tolerance)
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

from chunked_delta import IR_VERSION, TOLERANCE, Builder


def chunked_causal_conv(b: Builder, x: str, w: str, bias: str, state: str, valid: str, *, channels: int, k: int, chunk: int,
                        out: str, state_out: str) -> None:
    """x [1, ch, C], w [ch, 1, K], bias [ch], state [1, ch, K-1], valid int64 [1] (real tokens in
    the chunk) -> out [1, ch, C] (SiLU), state_out [1, ch, K-1]."""
    window = b.op("Concat", [state, x], axis=2)                                    # [1, ch, K-1+C]
    taps = b.op("Reshape", [w, b.const([1, channels, k])])
    total = None
    for j in range(k):
        shifted = b.op("Slice", [window, b.const([j]), b.const([j + chunk]), b.const([2])])
        term = b.op("Mul", [shifted, b.op("Slice", [taps, b.const([j]), b.const([j + 1]), b.const([2])])])
        total = term if total is None else b.op("Add", [total, term])
    y = b.op("Add", [total, b.op("Reshape", [bias, b.const([1, channels, 1])])])
    b.op("Mul", [y, b.op("Sigmoid", [y])], out)
    keep = b.op("Add", [valid, b.const(np.arange(k - 1))])                          # window columns valid .. valid+K-2
    b.op("Gather", [window, keep], state_out, axis=2)


def chunked_rotary(b: Builder, x: str, positions: str, cos: str, sin: str, *, num_heads: int, rotary_dim: int, chunk: int,
                   out: str) -> None:
    """x [1, C, heads*dim], positions [3, 1, C] (equal rows: text), cos/sin [max, rotary_dim/2]
    -> out [1, C, heads*dim], the first rotary_dim of each head rotated (rotate-half)."""
    half = rotary_dim // 2
    x = b.op("Reshape", [x, b.const([1, chunk, num_heads, -1])])
    p = b.op("Gather", [positions, b.const(0)], axis=0)                             # [1, C]
    c = b.op("Unsqueeze", [b.op("Gather", [cos, p], axis=0), b.const([2])])         # [1, C, 1, half]
    s = b.op("Unsqueeze", [b.op("Gather", [sin, p], axis=0), b.const([2])])
    x1 = b.op("Slice", [x, b.const([0]), b.const([half]), b.const([3])])
    x2 = b.op("Slice", [x, b.const([half]), b.const([2 * half]), b.const([3])])
    rest = b.op("Slice", [x, b.const([2 * half]), b.const([1 << 30]), b.const([3])])
    o1 = b.op("Sub", [b.op("Mul", [x1, c]), b.op("Mul", [x2, s])])
    o2 = b.op("Add", [b.op("Mul", [x2, c]), b.op("Mul", [x1, s])])
    b.op("Reshape", [b.op("Concat", [o1, o2, rest], axis=3), b.const([1, chunk, -1])], out)


def model(nodes, name, inputs, outputs, consts=(), microsoft=False):
    f = TensorProto.FLOAT
    info = lambda n, shape, t=f: helper.make_tensor_value_info(n, t, shape)  # noqa: E731
    g = helper.make_graph(nodes, name, [info(*i) for i in inputs], [info(*o) for o in outputs], initializer=list(consts))
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if microsoft else [])
    m = helper.make_model(g, opset_imports=opsets, ir_version=IR_VERSION)
    if not microsoft:
        onnx.checker.check_model(m)
        assert all(n.domain == "" for n in m.graph.node), "standard ONNX only"
    return m


def session(m):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def check_conv(name, channels, k, chunk, rng) -> float:
    i64 = TensorProto.INT64
    conv_io = [("w", [channels, 1, k]), ("bias", [channels]), ("state", [1, channels, k - 1])]
    ref_node = helper.make_node("CausalConvWithState", ["x", "w", "bias", "state"], ["out", "state_out"], domain="com.microsoft",
                                ndim=1, activation="silu")
    reference = session(model([ref_node], "reference", [("x", [1, channels, "S"])] + conv_io,
                              [("out", [1, channels, "S"]), ("state_out", [1, channels, k - 1])], microsoft=True))
    b = Builder("/chunked_conv")
    chunked_causal_conv(b, "x", "w", "bias", "state", "valid", channels=channels, k=k, chunk=chunk, out="out", state_out="state_out")
    chunked = session(model(b.nodes, "chunked", [("x", [1, channels, chunk])] + conv_io + [("valid", [1], i64)],
                            [("out", [1, channels, chunk]), ("state_out", [1, channels, k - 1])], b.consts))
    w = (rng.standard_normal((channels, 1, k)) * 0.5).astype(np.float32)
    bias = (rng.standard_normal(channels) * 0.1).astype(np.float32)
    state_ref = rng.standard_normal((1, channels, k - 1)).astype(np.float32)
    state_c, worst = state_ref.copy(), 0.0
    for n in [chunk, chunk, max(1, chunk // 3)]:
        x = rng.standard_normal((1, channels, n)).astype(np.float32)
        padded = np.concatenate([x, rng.standard_normal((1, channels, chunk - n)).astype(np.float32)], axis=2)  # garbage padding
        out_ref, state_ref = reference.run(None, dict(x=x, w=w, bias=bias, state=state_ref))
        out_c, state_c = chunked.run(None, dict(x=padded, w=w, bias=bias, state=state_c, valid=np.array([n], np.int64)))
        d_out, d_state = float(np.max(np.abs(out_c[:, :, :n] - out_ref))), float(np.max(np.abs(state_c - state_ref)))
        worst = max(worst, d_out, d_state)
        print(f"conv   {name:>6} {channels} channels, kernel {k}, chunk {chunk}, {n:>3} tokens: "
              f"max |diff| output {d_out:.2e}, state {d_state:.2e}")
    return worst


def check_rotary(name, heads, head_dim, rotary_dim, section, chunk, rng) -> float:
    i64 = TensorProto.INT64
    context, half = 262144, rotary_dim // 2
    inv_freq = 1.0 / (10000000.0 ** (np.arange(half) * 2.0 / rotary_dim))
    angles = np.arange(context)[:, None] * inv_freq[None, :]
    tables = dict(cos=np.cos(angles).astype(np.float32), sin=np.sin(angles).astype(np.float32))
    io = [("x", [1, "S", heads * head_dim]), ("positions", [3, 1, "S"], i64), ("cos", [context, half]), ("sin", [context, half])]
    ref_node = helper.make_node("MRotaryEmbedding", ["x", "positions", "cos", "sin"], ["out"], domain="com.microsoft",
                                interleaved=0, rotary_embedding_dim=rotary_dim, num_heads=heads, mrope_section=section, mrope_layout=1)
    reference = session(model([ref_node], "reference", io, [("out", [1, "S", heads * head_dim])], microsoft=True))
    b = Builder("/chunked_rotary")
    chunked_rotary(b, "x", "positions", "cos", "sin", num_heads=heads, rotary_dim=rotary_dim, chunk=chunk, out="out")
    fixed = [(n, [d if d != "S" else chunk for d in shape], *t) for n, shape, *t in io]
    chunked = session(model(b.nodes, "chunked", fixed, [("out", [1, chunk, heads * head_dim])], b.consts))
    worst = 0.0
    for start in [0, 4093, 250000]:
        x = rng.standard_normal((1, chunk, heads * head_dim)).astype(np.float32)
        positions = np.broadcast_to(np.arange(start, start + chunk), (3, 1, chunk)).astype(np.int64).copy()
        (out_ref,) = reference.run(None, dict(x=x, positions=positions, **tables))
        (out_c,) = chunked.run(None, dict(x=x, positions=positions, **tables))
        d = float(np.max(np.abs(out_c - out_ref)))
        worst = max(worst, d)
        print(f"rotary {name:>6} {heads} heads of {head_dim} ({rotary_dim} rotated), chunk {chunk}, positions from {start}: max |diff| {d:.2e}")
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunk", type=int, nargs="*", default=[16, 64])
    args = ap.parse_args()
    rng = np.random.default_rng(11)
    worst = 0.0
    for c in args.chunk:
        # conv channels: 2*nk*hk + nv*hv; rotary: a quarter of each head, the mrope sections of specs.py.
        for name, channels in [("tiny-a", 128), ("tiny-b", 160), ("0.8b", 6144)]:
            worst = max(worst, check_conv(name, channels, 4, c, rng))
        for name, heads, dim, section in [("tiny-a", 4, 32, [2, 1, 1]), ("tiny-b", 2, 64, [3, 3, 2]), ("0.8b", 8, 256, [11, 11, 10])]:
            worst = max(worst, check_rotary(name, heads, dim, dim // 4, section, c, rng))
    ok = worst <= TOLERANCE
    print(f"chunked conv and rotary vs ONNX Runtime's kernels: worst {worst:.2e} ({'within' if ok else 'OVER'} {TOLERANCE:.0e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
