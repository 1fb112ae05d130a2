#!/usr/bin/env python3
"""Makes a static one-token decode graph of a Qwen3.5 onnxruntime-genai export, the form the
QNN HTP (NPU) execution provider can take: every dynamic dimension fixed (batch 1, one new
token, a KV-cache buffer of CONTEXT positions shared by past and present as in genai's
past_present_share_buffer, the cache's head dimension from genai_config.json), then the
com.microsoft ops QNN rejects rewritten into plain ONNX (decompose.py).

usage: static_decode.py MODEL_DIR OUT_DIR [--context N] [--static-only]
  MODEL_DIR      a builder export (model.onnx, model.onnx.data, genai_config.json, tokenizer...)
  OUT_DIR        receives the other files as they are and the new model.onnx + model.onnx.data
  --context      KV-cache length (default 512); the attention mask has this length too
  --static-only  fix the shapes but keep the com.microsoft ops
"""
import argparse
import json
import os
import shutil
from collections import Counter

import onnx
from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

from decompose import decompose


def dim_values(model, genai, context):
    """The value for each dim_param of the graph's inputs and outputs."""
    fixed = {"batch_size": 1, "sequence_length": 1,
             "past_sequence_length": context, "total_sequence_length": context}
    decoder = genai["model"]["decoder"]
    cache = [decoder["inputs"][k].split("%d")[0]
             for k in ("past_key_names", "past_value_names") if k in decoder["inputs"]]
    values = {}
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            if not d.dim_param or d.dim_param in values:
                continue
            if d.dim_param in fixed:
                values[d.dim_param] = fixed[d.dim_param]
            elif any(v.name.startswith(p) for p in cache) and axis == len(dims) - 1:
                values[d.dim_param] = decoder["head_size"]      # kv_cache_dim and the like
            else:
                raise SystemExit(f"static_decode: no value for dimension '{d.dim_param}' of {v.name}")
    return values


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--static-only", action="store_true")
    args = ap.parse_args()

    with open(os.path.join(args.model_dir, "genai_config.json")) as f:
        genai = json.load(f)
    name = genai["model"]["decoder"].get("filename", "model.onnx")
    model = onnx.load(os.path.join(args.model_dir, name))
    values = dim_values(model, genai, args.context)
    for param, value in values.items():
        make_dim_param_fixed(model.graph, param, value)
    if not args.static_only:
        model = decompose(model)

    os.makedirs(args.out_dir, exist_ok=True)
    data = name + ".data"
    for entry in os.listdir(args.model_dir):
        src = os.path.join(args.model_dir, entry)
        if entry not in (name, data) and os.path.isfile(src):
            shutil.copy2(src, args.out_dir)
    if os.path.exists(os.path.join(args.out_dir, data)):
        os.remove(os.path.join(args.out_dir, data))          # onnx.save appends to it
    onnx.save(model, os.path.join(args.out_dir, name), save_as_external_data=True, location=data)
    print("static_decode: fixed", values)
    print("static_decode: nodes", len(model.graph.node),
          dict(Counter(n.op_type for n in model.graph.node).most_common()))
    print(os.path.join(args.out_dir, name))


if __name__ == "__main__":
    main()
