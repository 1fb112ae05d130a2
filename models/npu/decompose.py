#!/usr/bin/env python3
"""Rewrites the com.microsoft ops of a Qwen3.5 onnxruntime-genai export that the QNN execution
provider does not take into standard ONNX ops, for a static graph of C tokens (batch 1; C = 1
is a decode step, C > 1 a prefill chunk, padded at its end):

  SkipSimplifiedLayerNormalization -> Add + SimplifiedLayerNormalization
  LinearAttentionGate              -> Add, Softplus, Mul (by neg_exp_A), Sigmoid; a padded
                                      token's decay and beta are zeroed (it leaves the state alone)
  GatedRMSNorm                     -> SimplifiedLayerNormalization of each head's row * z*sigmoid(z)
  CausalConvWithState              -> one token: Concat(state, x), Slice, Mul/ReduceSum, SiLU;
                                      a chunk: chunked_conv_rope.chunked_causal_conv
  LinearAttention (gated_delta)    -> one token: S1 = S*exp(g); S2 = S1 + k (x) ((v - k^T S1)*beta);
                                      a chunk: chunked_delta.chunked_delta_rule
  MRotaryEmbedding                 -> Gather of the cos/sin rows + rotate-half (text only: the
                                      three position rows are equal)
  GroupQueryAttention              -> the KV cache a fixed buffer of T positions (past = present):
                                      the new rows written at their positions through a one-hot
                                      [T, C] matrix (rows elsewhere kept), then softmax(QK^T*scale
                                      + bias)V over the buffer, bias 0 where the key's position is
                                      <= the query's and attention_mask is 1, -30000 elsewhere

The graph's inputs keep their names: input_ids [1, C], attention_mask [1, T] (1 at the positions
that hold real tokens, this chunk's included), position_ids [3, 1, C]. The number of real tokens
in a chunk is sum(attention_mask) - position_ids[0, 0, 0].
MatMulNBits and GatherBlockQuantized stay (QNN takes the first; the second, the 4-bit embedding,
runs on the CPU).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from chunked_conv_rope import chunked_causal_conv, chunked_rotary
from chunked_delta import Builder, chunked_delta_rule

# Added to an attention score whose key the query must not see (finite: fp16 holds it).
MASKED = -30000.0

KEPT = {"MatMulNBits", "GatherBlockQuantized"}


def attr(n, key, default=None):
    return next((helper.get_attribute_value(a) for a in n.attribute if a.name == key), default)


class Positions:
    """The values every layer shares, computed once from the graph's inputs."""

    def __init__(self, b: Builder, chunk: int, context: int):
        f32, i32 = np.float32, np.int32
        pos64 = b.op("Reshape", [b.op("Gather", ["position_ids", b.const(0)], axis=0), b.const([chunk])])  # [C]
        pos = b.op("Cast", [pos64], to=onnx.TensorProto.INT32)
        mask = b.op("Cast", ["attention_mask"], to=onnx.TensorProto.INT32)                     # [1, T]
        keys = b.const(np.arange(context).reshape(context, 1), i32)                            # [T, 1]
        self.write = b.op("Cast", [b.op("Equal", [keys, b.op("Reshape", [pos, b.const([1, chunk])])])],
                          to=onnx.TensorProto.FLOAT)                                           # [T, C] one-hot
        self.keep = b.op("Sub", [b.const(1.0, f32), b.op("ReduceSum", [self.write, b.const([1])], keepdims=1)])  # [T, 1]
        seen = b.op("And", [b.op("LessOrEqual", [b.op("Reshape", [keys, b.const([1, context])]),
                                                 b.op("Reshape", [pos, b.const([chunk, 1])])]),
                            b.op("Equal", [mask, b.const([1], i32)])])                         # [C, T]
        self.bias = b.op("Where", [seen, b.const(0.0, f32), b.const(MASKED, f32)])
        self.valid = self.token_mask = None
        if chunk > 1:
            real = b.op("ReduceSum", ["attention_mask", b.const([1])], keepdims=0)             # [1]
            self.valid = b.op("Sub", [real, b.op("Slice", [pos64, b.const([0]), b.const([1])])])
            index = b.const(np.arange(chunk), np.int64)
            self.token_mask = b.op("Reshape", [b.op("Cast", [b.op("Less", [index, self.valid])], to=onnx.TensorProto.FLOAT),
                                               b.const([1, chunk, 1])])                        # [1, C, 1]


def decompose(model: onnx.ModelProto, chunk: int, context: int) -> onnx.ModelProto:
    """Rewrites `model` (shapes already fixed: batch 1, C tokens, a KV buffer of `context`) in place."""
    g = model.graph
    inits = {i.name: list(i.dims) for i in g.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in list(g.input) + list(g.output)}
    b = Builder("/static")
    at = Positions(b, chunk, context)
    c, f32 = chunk, np.float32

    def rms_norm(x, w, eps, out=None):
        return b.op("SimplifiedLayerNormalization", [x, w], out, axis=-1, epsilon=eps, stash_type=1)

    kept = []
    for n in g.node:
        t, i, o = n.op_type, list(n.input), list(n.output)
        eps = attr(n, "epsilon", 1e-6)
        if n.domain != "com.microsoft" or t in KEPT:
            b.nodes.append(n)
            kept.append(n)
        elif t == "SkipSimplifiedLayerNormalization":
            assert len(i) < 4 or not i[3], "SkipSimplifiedLayerNormalization with a bias"
            s = b.op("Add", i[:2], o[3] if len(o) > 3 and o[3] else None)
            rms_norm(s, i[2], eps, o[0])
        elif t == "LinearAttentionGate":
            a, dt_bias, neg_exp_a, beta = i
            decay = b.op("Mul", [neg_exp_a, b.op("Softplus", [b.op("Add", [a, dt_bias])])])
            beta = b.op("Sigmoid", [beta])
            if at.token_mask:
                decay, beta = b.op("Mul", [decay, at.token_mask]), b.op("Mul", [beta, at.token_mask])
            b.op("Identity", [decay], o[0])
            b.op("Identity", [beta], o[1])
        elif t == "GatedRMSNorm":
            x, w, z = i
            # Rows of one head, [1, C*heads, dim]: QNN's HTP normalizes a 4-D [1, C, heads, dim]
            # wrongly when C > 1 (QNN 2.7.0: off by up to 2.4 on unit outputs; 3-D is right).
            per_head = b.const([1, -1, inits[w][0]])
            z3 = b.op("Reshape", [z, per_head])
            y = b.op("Mul", [rms_norm(b.op("Reshape", [x, per_head]), w, eps), b.op("Mul", [z3, b.op("Sigmoid", [z3])])])
            b.op("Reshape", [y, b.const([1, c, -1])], o[0])
        elif t == "CausalConvWithState":
            assert attr(n, "activation") == b"silu" and attr(n, "ndim") == 1, n.name
            x, w, bias, state = i[:4]
            channels, _, k = inits[w]
            if c > 1:
                chunked_causal_conv(b, x, w, bias, state, at.valid, channels=channels, k=k, chunk=c, out=o[0], state_out=o[1])
                continue
            window = b.op("Concat", [state, x], axis=2)                                         # [1, ch, K]
            b.op("Slice", [window, b.const([1]), b.const([k]), b.const([2])], o[1])
            y = b.op("ReduceSum", [b.op("Mul", [window, b.op("Reshape", [w, b.const([1, channels, k])])]), b.const([2])], keepdims=1)
            y = b.op("Add", [y, b.op("Reshape", [bias, b.const([1, channels, 1])])])
            b.op("Mul", [y, b.op("Sigmoid", [y])], o[0])
        elif t == "LinearAttention":
            assert attr(n, "update_rule") == b"gated_delta", n.name
            q, k, v, state, decay, beta = i[:6]
            nk, nv = attr(n, "q_num_heads"), attr(n, "kv_num_heads")
            _, _, hk, hv = shapes[state]
            scale = attr(n, "scale", 1.0)
            assert scale > 0, "LinearAttention with the default scale"
            if c > 1:
                chunked_delta_rule(b, q, k, v, state, decay, beta, nk=nk, nv=nv, hk=hk, hv=hv, chunk=c, scale=scale,
                                   out=o[0], state_out=o[1])
                continue

            def repeat(x):  # [1, 1, nk*hk] -> [1, nv, 1, hk], each key head repeated nv/nk times
                x = b.op("Expand", [b.op("Reshape", [x, b.const([1, nk, 1, 1, hk])]), b.const([1, nk, nv // nk, 1, hk])])
                return b.op("Reshape", [x, b.const([1, nv, 1, hk])])

            qr, kr = repeat(q), repeat(k)
            s1 = b.op("Mul", [state, b.exp_decay(b.op("Reshape", [decay, b.const([1, nv, 1, 1])]))])
            delta = b.op("Mul", [b.op("Sub", [b.op("Reshape", [v, b.const([1, nv, 1, hv])]), b.op("MatMul", [kr, s1])]),
                                 b.op("Reshape", [beta, b.const([1, nv, 1, 1])])])
            s2 = b.op("Add", [s1, b.op("MatMul", [b.op("Reshape", [kr, b.const([1, nv, hk, 1])]), delta])], o[1])
            out = b.op("MatMul", [qr, s2])
            if scale != 1.0:
                out = b.op("Mul", [out, b.const(scale, f32)])
            b.op("Reshape", [out, b.const([1, 1, nv * hv])], o[0])
        elif t == "MRotaryEmbedding":
            assert attr(n, "interleaved", 0) == 0, n.name
            x, pos, cos, sin = i[:4]
            rotary = attr(n, "rotary_embedding_dim", 0) or 2 * inits[cos][1]
            chunked_rotary(b, x, pos, cos, sin, num_heads=attr(n, "num_heads"), rotary_dim=rotary, chunk=c, out=o[0])
        elif t == "GroupQueryAttention":
            attention(b, n, at, shapes, c, context)
        else:
            raise SystemExit(f"decompose: no standard form for {n.domain}.{t} ({n.name})")
    if c > 1:
        last_position_logits(b, g, at.valid)
    del g.node[:]
    g.node.extend(b.nodes)
    g.initializer.extend(b.consts)
    prune(g)
    return model


def last_position_logits(b: Builder, g, valid: str) -> None:
    """Feeds the LM head the last real token's hidden state only: `logits` becomes [1, 1, vocab].
    A prefill chunk needs no other row, and the head is the graph's largest product (a
    248k-row matrix: 64 rows of it cost more than the rest of a tiny model's chunk)."""
    head = next(n for n in b.nodes if "logits" in n.output)
    index = b.op("Sub", [valid, b.const([1])])
    b.nodes.remove(head)
    head.input[0] = b.op("Gather", [head.input[0], index], axis=1)                          # [1, 1, hidden]
    b.nodes.append(head)
    out = next(v for v in g.output if v.name == "logits")
    out.type.tensor_type.shape.dim[1].dim_value = 1


def attention(b: Builder, n, at: Positions, shapes, c: int, context: int) -> None:
    """GroupQueryAttention (BNSH past = present buffer of `context`, no rotary, no softcap) in standard ops."""
    i, o = list(n.input), list(n.output)
    assert attr(n, "do_rotary", 0) == 0 and attr(n, "softcap", 0.0) == 0.0 and attr(n, "local_window_size", -1) == -1, n.name
    assert len(i) < 8 or not any(i[7:]), f"{n.name}: GroupQueryAttention with cos/sin or extra inputs"
    heads, kv_heads = attr(n, "num_heads"), attr(n, "kv_num_heads")
    _, _, _, dim = shapes[i[3]]
    scale = attr(n, "scale", 0.0) or dim ** -0.5
    group = heads // kv_heads

    def per_head(x, count):  # [1, C, count*dim] -> [1, count, C, dim]
        return b.op("Transpose", [b.op("Reshape", [x, b.const([1, c, count, dim])])], perm=[0, 2, 1, 3])

    def written(past, new, out):  # the buffer with this chunk's rows at their positions
        rows = b.op("MatMul", [at.write, per_head(new, kv_heads)])                              # [1, kv, T, dim]
        return b.op("Add", [b.op("Mul", [past, at.keep]), rows], out)

    keys, values = written(i[3], i[1], o[1]), written(i[4], i[2], o[2])
    q = b.op("Reshape", [per_head(i[0], heads), b.const([1, kv_heads, group * c, dim])])        # heads of one KV head together
    scores = b.op("MatMul", [q, b.op("Transpose", [keys], perm=[0, 1, 3, 2])])                 # [1, kv, g*C, T]
    scores = b.op("Reshape", [b.op("Mul", [scores, b.const(scale, np.float32)]), b.const([1, kv_heads, group, c, context])])
    probs = b.op("Softmax", [b.op("Add", [scores, at.bias])], axis=-1)
    out = b.op("MatMul", [b.op("Reshape", [probs, b.const([1, kv_heads, group * c, context])]), values])
    out = b.op("Transpose", [b.op("Reshape", [out, b.const([1, heads, c, dim])])], perm=[0, 2, 1, 3])
    b.op("Reshape", [out, b.const([1, c, heads * dim])], o[0])


def prune(g) -> None:
    """Drops the nodes and initializers nothing reads (GroupQueryAttention's mask reformatting)."""
    needed = {v.name for v in g.output}
    live = []
    for n in reversed(list(g.node)):
        if any(x in needed for x in n.output):
            live.append(n)
            needed.update(x for x in n.input if x)
    del g.node[:]
    g.node.extend(reversed(live))
    unused = [init for init in g.initializer if init.name not in needed]
    for init in unused:
        g.initializer.remove(init)
