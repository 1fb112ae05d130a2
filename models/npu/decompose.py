#!/usr/bin/env python3
"""Rewrites the com.microsoft ops of a Qwen3.5 onnxruntime-genai export that the QNN execution
provider does not take into plain ONNX ops, for one static decode step (batch 1, one token).

  SkipSimplifiedLayerNormalization -> Add + SimplifiedLayerNormalization
  LinearAttentionGate              -> Add, Softplus, Mul (by neg_exp_A), Sigmoid
  GatedRMSNorm                     -> per-head SimplifiedLayerNormalization * z*sigmoid(z)
  CausalConvWithState              -> Concat(state, x), Slice (new state), Mul/ReduceSum, bias, SiLU
  LinearAttention (gated_delta)    -> q/k repeat-interleaved to the value heads, then
                                      S1 = S*exp(g); S2 = S1 + k (x) ((v - k^T S1)*beta); o = q^T S2
  MRotaryEmbedding                 -> Gather of the cos/sin rows + rotate-half on the rotary dims;
                                      exact for text-only input, where the 3 position rows are equal

The input must already have static shapes (static_decode.py does both steps); the result matches
the original on the CPU execution provider to about 1e-5. Prefill (more than one token) is not
covered: the linear-attention layers would need a chunked or unrolled delta rule.

usage: decompose.py IN.onnx OUT.onnx    (OUT gets its weights in OUT.onnx.data)
"""
import os
import sys
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper


def decompose(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    inits = {i.name: list(i.dims) for i in g.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(g.input) + list(g.output) + list(g.value_info)}
    nodes, consts = [], []

    def const(value, dtype=np.int64):
        name = f"/decomp/const_{len(consts)}"
        consts.append(numpy_helper.from_array(np.array(value, dtype), name))
        return name

    def op(kind, inputs, out=None, **attrs):
        name = f"/decomp/{kind}_{len(nodes)}"
        out = out or f"{name}/output_0"
        nodes.append(helper.make_node(kind, inputs, [out], name=name, **attrs))
        return out

    def attr(n, key, default=None):
        return next((helper.get_attribute_value(a) for a in n.attribute if a.name == key), default)

    def rms_norm(x, w, eps, out=None):
        return op("SimplifiedLayerNormalization", [x, w], out, axis=-1, epsilon=eps, stash_type=1)

    for n in g.node:
        t, i, o = n.op_type, list(n.input), list(n.output)
        eps = attr(n, "epsilon", 1e-6)
        if n.domain != "com.microsoft":
            nodes.append(n)
        elif t == "SkipSimplifiedLayerNormalization":
            assert len(i) < 4 or not i[3], "SkipSimplifiedLayerNormalization with a bias"
            s = op("Add", i[:2], o[3] if len(o) > 3 and o[3] else None)
            rms_norm(s, i[2], eps, o[0])
        elif t == "LinearAttentionGate":
            a, dt_bias, neg_exp_a, b = i
            op("Mul", [neg_exp_a, op("Softplus", [op("Add", [a, dt_bias])])], o[0])
            op("Sigmoid", [b], o[1])
        elif t == "GatedRMSNorm":
            x, w, z = i
            per_head = const([0, 0, -1, inits[w][0]])
            z4 = op("Reshape", [z, per_head])
            y = op("Mul", [rms_norm(op("Reshape", [x, per_head]), w, eps),
                           op("Mul", [z4, op("Sigmoid", [z4])])])
            op("Reshape", [y, const([0, 0, -1])], o[0])
        elif t == "CausalConvWithState":
            assert attr(n, "activation") == b"silu" and attr(n, "ndim") == 1, n.name
            x, w, bias, state = i[:4]
            channels, _, k = inits[w]
            window = op("Concat", [state, x], axis=2)                      # [1, C, K]
            op("Slice", [window, const([1]), const([k]), const([2])], o[1])
            y = op("ReduceSum", [op("Mul", [window, op("Reshape", [w, const([1, channels, k])])]),
                                 const([2])], keepdims=1)
            y = op("Add", [y, op("Reshape", [bias, const([1, channels, 1])])])
            op("Mul", [y, op("Sigmoid", [y])], o[0])
        elif t == "LinearAttention":
            assert attr(n, "update_rule") == b"gated_delta", n.name
            q, k, v, state, decay, beta = i[:6]
            nk, nv = attr(n, "q_num_heads"), attr(n, "kv_num_heads")
            _, _, hk, hv = shapes[state]

            def repeat(x):  # [1, 1, nk*hk] -> [1, nv, 1, hk], each key head repeated nv/nk times
                x = op("Expand", [op("Reshape", [x, const([1, nk, 1, 1, hk])]),
                                  const([1, nk, nv // nk, 1, hk])])
                return op("Reshape", [x, const([1, nv, 1, hk])])

            qr, kr = repeat(q), repeat(k)
            s1 = op("Mul", [state, op("Exp", [op("Reshape", [decay, const([1, nv, 1, 1])])])])
            delta = op("Mul", [op("Sub", [op("Reshape", [v, const([1, nv, 1, hv])]),
                                          op("MatMul", [kr, s1])]),
                               op("Reshape", [beta, const([1, nv, 1, 1])])])
            k_col = op("Reshape", [kr, const([1, nv, hk, 1])])
            s2 = op("Add", [s1, op("MatMul", [k_col, delta])], o[1])
            out = op("MatMul", [qr, s2])
            scale = attr(n, "scale", 1.0)
            assert scale > 0, "LinearAttention with the default scale"
            if scale != 1.0:
                out = op("Mul", [out, const(scale, np.float32)])
            op("Reshape", [out, const([1, 1, nv * hv])], o[0])
        elif t == "MRotaryEmbedding":
            assert attr(n, "interleaved", 0) == 0, n.name
            x, pos, cos, sin = i[:4]
            half = attr(n, "rotary_embedding_dim", 0) // 2 or inits[cos][1]
            x = op("Reshape", [x, const([1, 1, attr(n, "num_heads"), -1])])
            p = op("Gather", [pos, const(0)], axis=0)              # text-only: the rows are equal
            c = op("Unsqueeze", [op("Gather", [cos, p], axis=0), const([2])])   # [1, 1, 1, half]
            s = op("Unsqueeze", [op("Gather", [sin, p], axis=0), const([2])])
            x1 = op("Slice", [x, const([0]), const([half]), const([3])])
            x2 = op("Slice", [x, const([half]), const([2 * half]), const([3])])
            rest = op("Slice", [x, const([2 * half]), const([1 << 30]), const([3])])
            o1 = op("Sub", [op("Mul", [x1, c]), op("Mul", [x2, s])])
            o2 = op("Add", [op("Mul", [x2, c]), op("Mul", [x1, s])])
            op("Reshape", [op("Concat", [o1, o2, rest], axis=3), const([1, 1, -1])], o[0])
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(consts)
    return model


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1:]
    model = decompose(onnx.load(src))
    data = os.path.basename(dst) + ".data"
    if os.path.exists(os.path.join(os.path.dirname(dst), data)):
        os.remove(os.path.join(os.path.dirname(dst), data))
    onnx.save(model, dst, save_as_external_data=True, location=data)
    print("nodes", len(model.graph.node), dict(Counter(n.op_type for n in model.graph.node).most_common()))


if __name__ == "__main__":
    main()
