#!/usr/bin/env python3
"""Makes the two static graphs an NPU execution provider (QNN's HTP) can take from a Qwen3.5
onnxruntime-genai export: `decode.onnx` (one token) and `prefill.onnx` (a chunk of C tokens,
padded at its end), batch 1, a KV buffer of T positions (past and present are the same buffer,
the new rows written at their positions), the conv and recurrent states as inputs and outputs,
every com.microsoft operator but MatMulNBits and the 4-bit embedding lookup in standard ONNX
(decompose.py). Both graphs read the export's weights from one data file, `model.onnx.data`,
linked (or copied) next to them with the export's own graph and text files, so OUT_DIR is a
model directory the daemon loads (`model.backend = "static"` runs these graphs); `static.json`
says the chunk and the context.

Feeding them: input_ids [1, C] (the padding: any token), position_ids [3, 1, C] (the positions
p .. p+C-1 in each row), attention_mask [1, T] (1 at positions 0 .. p+n-1 for n real tokens),
the past buffers and states as the previous call returned them (zeros at first). logits are
[1, 1, vocab]: the last real token's (the prefill graph applies the LM head to that row only).

usage: static_graphs.py MODEL_DIR OUT_DIR [--context T] [--chunk C]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from collections import Counter

import onnx
from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

from decompose import decompose

DATA = "model.onnx.data"


def dim_values(model, genai, chunk, context):
    """The value of each dim_param of the graph's inputs and outputs."""
    fixed = {"batch_size": 1, "sequence_length": chunk, "past_sequence_length": context, "total_sequence_length": context}
    decoder = genai["model"]["decoder"]
    cache = [decoder["inputs"][k].split("%d")[0] for k in ("past_key_names", "past_value_names") if k in decoder["inputs"]]
    cache += [decoder["outputs"][k].split("%d")[0] for k in ("present_key_names", "present_value_names") if k in decoder["outputs"]]
    values = {}
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            if not d.dim_param or d.dim_param in values:
                continue
            if d.dim_param in fixed:
                values[d.dim_param] = fixed[d.dim_param]
            elif any(v.name.startswith(p) for p in cache) and axis == len(dims) - 1:
                values[d.dim_param] = decoder["head_size"]
            else:
                raise SystemExit(f"static_graphs: no value for dimension '{d.dim_param}' of {v.name}")
    return values


def static_graph(path: str, genai: dict, chunk: int, context: int) -> onnx.ModelProto:
    """The export at `path` with fixed shapes for `chunk` tokens, its contrib ops rewritten. The
    weights stay where they are (external data is not loaded)."""
    model = onnx.load(path, load_external_data=False)
    for param, value in dim_values(model, genai, chunk, context).items():
        make_dim_param_fixed(model.graph, param, value)
    return decompose(model, chunk, context)


def link_or_copy(src: str, dst: str) -> None:
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build(model_dir: str, out_dir: str, *, chunk: int, context: int) -> dict:
    """Writes decode.onnx, prefill.onnx, the shared data file and static.json into `out_dir`;
    returns the description written to static.json."""
    with open(os.path.join(model_dir, "genai_config.json")) as f:
        genai = json.load(f)
    name = genai["model"]["decoder"].get("filename", "model.onnx")
    source = os.path.join(model_dir, name)
    os.makedirs(out_dir, exist_ok=True)
    data_files = set()
    graphs = {}
    for kind, tokens in (("decode", 1), ("prefill", chunk)):
        model = static_graph(source, genai, tokens, context)
        for init in model.graph.initializer:
            for entry in init.external_data:
                if entry.key == "location":
                    data_files.add(entry.value)
        onnx.save(model, os.path.join(out_dir, f"{kind}.onnx"))
        graphs[kind] = {"file": f"{kind}.onnx", "tokens": tokens, "nodes": len(model.graph.node),
                        "ops": dict(Counter(n.op_type for n in model.graph.node).most_common())}
    for data in data_files:
        link_or_copy(os.path.join(model_dir, data), os.path.join(out_dir, data))
    link_or_copy(source, os.path.join(out_dir, name))       # the export itself: the directory still loads as a model
    for entry in os.listdir(model_dir):
        src = os.path.join(model_dir, entry)
        if entry != name and entry not in data_files and os.path.isfile(src):
            shutil.copy2(src, out_dir)
    description = {"chunk": chunk, "context": context, "source": name, "graphs": graphs}
    with open(os.path.join(out_dir, "static.json"), "w") as f:
        json.dump(description, f, indent=2)
    return description


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--context", type=int, default=4096, help="KV buffer length T (default 4096)")
    ap.add_argument("--chunk", type=int, default=64, help="prefill chunk C (default 64)")
    args = ap.parse_args()
    description = build(args.model_dir, args.out_dir, chunk=args.chunk, context=args.context)
    for kind, graph in description["graphs"].items():
        print(f"static_graphs: {kind}: {graph['tokens']} token(s), {graph['nodes']} nodes, {graph['ops']}")
    print(args.out_dir)


if __name__ == "__main__":
    main()
