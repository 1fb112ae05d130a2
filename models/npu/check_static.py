#!/usr/bin/env python3
"""Checks static_graphs.py's graphs against the export they come from, on ONNX Runtime's CPU
provider in fp32 (a 4-bit export's MatMulNBits too: accuracy_level 0, in both):

  1. state: a prompt prefilled in padded chunks by prefill.onnx leaves the same conv and
     recurrent states as the export fed one token at a time (max |difference| within 1e-4), the
     same KV rows (within 1e-4 of their largest value: these reach 10 in the random fixtures, and
     the export itself, one pass against one token at a time, differs by up to 4e-5 there) and
     the same last logits;
  2. tokens: greedy generation (prefill.onnx, then decode.onnx a token at a time) gives the
     same tokens as the export (the whole prompt in one pass, then a token at a time).

usage: check_static.py MODEL_DIR [MODEL_DIR ...] [--chunk C] [--context T] [--tokens N]
(exit status 1 when a state differs by more than the tolerance or a token differs)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

from chunked_delta import TOLERANCE
from static_graphs import build, link_or_copy


class Names:
    """The export's input and output names per layer, from genai_config.json."""

    def __init__(self, model_dir: str):
        with open(os.path.join(model_dir, "genai_config.json")) as f:
            self.decoder = json.load(f)["model"]["decoder"]

    def pairs(self, session) -> list[tuple[str, str, str]]:
        """(past input, present output, kind) for every state the graph carries."""
        inputs, outputs = self.decoder["inputs"], self.decoder["outputs"]
        names = {i.name for i in session.get_inputs()}
        found = []
        for kind in ("key", "value", "conv", "recurrent"):
            past, present = inputs.get(f"past_{kind}_names"), outputs.get(f"present_{kind}_names")
            for layer in range(self.decoder["num_hidden_layers"]):
                if past and past % layer in names:
                    found.append((past % layer, present % layer, kind))
        return found


def session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def zeros(s, name: str, **fixed) -> np.ndarray:
    meta = next(i for i in s.get_inputs() if i.name == name)
    shape = [fixed.get(d, d) if isinstance(d, str) else d for d in meta.shape]
    return np.zeros([1 if d == "batch_size" else d for d in shape], np.float32)


class Dynamic:
    """The export as the daemon runs it: growing KV, any number of tokens per call."""

    def __init__(self, model_dir: str, names: Names):
        self.s = session(os.path.join(model_dir, names.decoder.get("filename", "model.onnx")))
        self.pairs = names.pairs(self.s)
        self.state = {past: zeros(self.s, past, past_sequence_length=0, kv_cache_dim=names.decoder["head_size"])
                      for past, _, _ in self.pairs}
        self.length = 0

    def run(self, tokens: list[int]) -> np.ndarray:
        n = len(tokens)
        positions = np.arange(self.length, self.length + n, dtype=np.int64)
        feeds = dict(self.state, input_ids=np.array([tokens], np.int64),
                     attention_mask=np.ones((1, self.length + n), np.int64),
                     position_ids=np.broadcast_to(positions, (3, 1, n)).copy())
        out = dict(zip([o.name for o in self.s.get_outputs()], self.s.run(None, feeds)))
        self.state = {past: out[present] for past, present, _ in self.pairs}
        self.length += n
        return out["logits"][0, -1]


class Static:
    """static_graphs.py's pair: padded chunks, fixed buffers."""

    def __init__(self, out_dir: str, names: Names, chunk: int, context: int):
        self.prefill, self.decode = session(os.path.join(out_dir, "prefill.onnx")), session(os.path.join(out_dir, "decode.onnx"))
        self.pairs = names.pairs(self.decode)
        self.state = {past: zeros(self.decode, past) for past, _, _ in self.pairs}
        self.chunk, self.context, self.length = chunk, context, 0

    def step(self, s, tokens: list[int], size: int) -> np.ndarray:
        n = len(tokens)
        ids = np.zeros((1, size), np.int64)
        ids[0, :n] = tokens
        mask = np.zeros((1, self.context), np.int64)
        mask[0, : self.length + n] = 1
        positions = np.arange(self.length, self.length + size, dtype=np.int64)
        feeds = dict(self.state, input_ids=ids, attention_mask=mask, position_ids=np.broadcast_to(positions, (3, 1, size)).copy())
        out = dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
        self.state = {past: out[present] for past, present, _ in self.pairs}
        self.length += n
        return out["logits"][0, -1]

    def run(self, tokens: list[int]) -> np.ndarray:
        if len(tokens) == 1:
            return self.step(self.decode, tokens, 1)
        for start in range(0, len(tokens), self.chunk):
            logits = self.step(self.prefill, tokens[start : start + self.chunk], self.chunk)
        return logits


def differences(reference: Dynamic, other) -> dict[str, float]:
    """Max |difference| from `reference`'s states: `state` over the conv and recurrent states,
    `kv` over the KV rows written so far, `kv_scale` the largest |value| in those rows."""
    found = {"state": 0.0, "kv": 0.0, "kv_scale": 0.0}
    for past, _, name in reference.pairs:
        a, b = reference.state[past], other.state[past]
        kind = "kv" if name in ("key", "value") else "state"
        if a.shape != b.shape:  # a KV cache: the static buffer's first rows
            b = b[:, :, : a.shape[2]]
        found[kind] = max(found[kind], float(np.max(np.abs(a - b))))
        if kind == "kv":
            found["kv_scale"] = max(found["kv_scale"], float(np.max(np.abs(a))))
    return found


def fp32_activations(model_dir: str, work: str) -> str:
    """`model_dir`, or a copy in `work` whose 4-bit MatMulNBits compute in fp32 (accuracy_level 0)
    instead of quantizing their inputs to int8 (level 4: a rounding that a 1e-6 change of an
    input can flip, so the export itself differs by 1e-1 between one pass and one token at a time)."""
    names = Names(model_dir)
    name = names.decoder.get("filename", "model.onnx")
    model = onnx.load(os.path.join(model_dir, name), load_external_data=False)
    levels = [a for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"]
    if not any(a.i for a in levels):
        return model_dir
    for a in levels:
        a.i = 0
    copy = os.path.join(work, "fp32-activations")
    os.makedirs(copy)
    for entry in os.listdir(model_dir):
        if entry != name:
            link_or_copy(os.path.join(model_dir, entry), os.path.join(copy, entry))
    onnx.save(model, os.path.join(copy, name))
    return copy


def check(model_dir: str, chunk: int, context: int, new_tokens: int, rng) -> bool:
    label = os.path.join(os.path.basename(os.path.dirname(model_dir)), os.path.basename(model_dir))
    with tempfile.TemporaryDirectory() as out:
        model_dir = fp32_activations(model_dir, out)
        names = Names(model_dir)
        started = time.monotonic()
        build(model_dir, out, chunk=chunk, context=context)
        built = time.monotonic() - started
        ok = True
        for length in (2 * chunk + chunk // 3, chunk // 2 + 1):
            prompt = [int(t) for t in rng.integers(0, 151000, length)]
            # 1. the state after the prompt: chunks vs one token at a time (and, for scale, the
            #    export's own difference between one pass and one token at a time).
            one_by_one, one_pass, static = Dynamic(model_dir, names), Dynamic(model_dir, names), Static(out, names, chunk, context)
            for token in prompt:
                last = one_by_one.run([token])
            a, b = one_pass.run(prompt), static.run(prompt)
            ours, floor = differences(one_by_one, static), differences(one_by_one, one_pass)
            d_logits = float(np.max(np.abs(b - last)))
            kv_relative = ours["kv"] / max(ours["kv_scale"], 1.0)
            # 2. greedy tokens: the export (the prompt in one pass) and the static pair.
            ours_tokens, theirs, margins = [], [], []
            for _ in range(new_tokens):
                top = np.sort(a)[-2:]
                margins.append(float(top[1] - top[0]))
                theirs.append(int(np.argmax(a)))
                ours_tokens.append(int(np.argmax(b)))
                if theirs[-1] != ours_tokens[-1]:
                    break
                a, b = one_pass.run([theirs[-1]]), static.run([ours_tokens[-1]])
            same = ours_tokens == theirs
            ok &= same and ours["state"] <= TOLERANCE and kv_relative <= TOLERANCE
            print(f"{label:>14} prompt {length:>3} (chunk {chunk}, context {context}): conv/recurrent state max |diff| "
                  f"{ours['state']:.1e}, KV {ours['kv']:.1e} ({kv_relative:.1e} of its largest value {ours['kv_scale']:.1f}), "
                  f"last logits {d_logits:.1e} [the export itself, one pass vs token by token: state {floor['state']:.1e}, "
                  f"KV {floor['kv']:.1e}]; greedy {len(ours_tokens)} tokens {'equal' if same else 'DIFFER'} "
                  f"(smallest top-2 margin {min(margins):.3f}); graphs built in {built:.1f} s")
        return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dirs", nargs="+")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()
    rng = np.random.default_rng(5)
    ok = all([check(d, args.chunk, args.context, args.tokens, rng) for d in args.model_dirs])
    print(f"static graphs vs the exports: tokens equal, states within {TOLERANCE:.0e}" if ok else
          f"static graphs vs the exports: DIFFERENCES (tokens must be equal, states within {TOLERANCE:.0e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
