#!/usr/bin/env python3
"""Runs static_graphs.py's decode and prefill graphs on QNN's HTP (on x86-64 the plugin from
PyPI simulates it) and checks them against the same graphs on ONNX Runtime's CPU provider:

  1. placement: every node of both graphs on the HTP but the embedding lookup;
  2. a compiled-model cache: the first start prepares each graph for the HTP and writes a QNN
     context model (ep.context_enable) and its context binary; the second start loads those
     instead (both times printed);
  3. numerics (fp16 on the HTP): prompts prefilled in chunks, then generation a token at a time,
     both providers fed the CPU's greedy token (so every step compares the same history): the
     fp16 error e is the largest |logit difference| over all steps; at every step where the
     CPU's top-2 margin exceeds e the HTP's top token must be the CPU's (and where it exceeds
     2e, a difference of e on each of the two logits could not have swapped them). The share
     of steps with equal top tokens is printed for all steps as well.

usage: check_htp.py MODEL_DIR [MODEL_DIR ...] [--plugin LIB] [--chunk C] [--context T] [--tokens N]
                    [--prompts LENGTH ...]
  --plugin  libonnxruntime_providers_qnn.so (default $QWENEDGE_EP_QNN)
(exit status 1 when a node other than the embedding lookup leaves the HTP, the second start does
not load the context model, or a top token differs where the margin says it must not)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter

import numpy as np
import onnxruntime as ort

from check_static import Names, Static, fp32_activations
from placement import captured
from static_graphs import build

EP = "QNNExecutionProvider"
# The HTP options of a Snapdragon X Elite (v73); fp16 activations.
HTP_OPTIONS = {"backend_type": "htp", "enable_htp_fp16_precision": "1", "htp_arch": "73", "soc_model": "60"}
# What may run elsewhere: the 4-bit embedding lookup ("GPU backend only" for QNN).
ALLOWED_ELSEWHERE = {"GatherBlockQuantized"}


def qnn_sessions(devices, paths: dict[str, str], context_dir: str | None) -> tuple[dict, float]:
    """Sessions on the HTP for each graph; with `context_dir`, also writes each graph's QNN
    context model there. Returns the sessions and the seconds it took."""
    sessions, started = {}, time.monotonic()
    for kind, path in paths.items():
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        # One QNN context per graph. Both graphs in one context with their weights once
        # (ep.share_ep_contexts, enable_htp_weight_sharing) is written, but loading it crashes
        # the simulator (QNN 2.7.0: SIGSEGV in a new process, "contextCreateFromBinary ...
        # NOT_SUPPORTED" in the same one), with or without weight sharing.
        if context_dir:
            so.add_session_config_entry("ep.context_enable", "1")
            so.add_session_config_entry("ep.context_embed_mode", "0")
            so.add_session_config_entry("ep.context_file_path", os.path.join(context_dir, f"{kind}_ctx.onnx"))
        so.add_provider_for_devices(devices, HTP_OPTIONS)
        with open(os.devnull, "w") as devnull, captured(devnull):
            sessions[kind] = ort.InferenceSession(path, so)
    return sessions, time.monotonic() - started


def placement(s) -> tuple[Counter, Counter]:
    """Nodes on the HTP by op type, and elsewhere."""
    on, off = Counter(), Counter()
    for sg in s.get_provider_graph_assignment_info():
        for n in sg.get_nodes():
            (on if sg.ep_name == EP else off)[n.op_type] += 1
    return on, off


class Htp(Static):
    """The static pair with the HTP's sessions."""

    def __init__(self, out, names, chunk, context, sessions):
        super().__init__(out, names, chunk, context)
        self.prefill, self.decode = sessions["prefill"], sessions["decode"]

    def step(self, s, tokens, size):
        with open(os.devnull, "w") as devnull, captured(devnull):
            return super().step(s, tokens, size)


def check(model_dir: str, devices, chunk: int, context: int, new_tokens: int, prompts: list[int], rng) -> bool:
    label = os.path.join(os.path.basename(os.path.dirname(model_dir)), os.path.basename(model_dir))
    ok = True
    with tempfile.TemporaryDirectory() as out:
        model_dir = fp32_activations(model_dir, out)
        names = Names(model_dir)
        build(model_dir, out, chunk=chunk, context=context)
        graphs = {kind: os.path.join(out, f"{kind}.onnx") for kind in ("prefill", "decode")}
        contexts = os.path.join(out, "qnn")
        os.makedirs(contexts)
        first, first_s = qnn_sessions(devices, graphs, contexts)
        for kind, s in first.items():
            on, off = placement(s)
            stray = {op: n for op, n in off.items() if op not in ALLOWED_ELSEWHERE}
            ok &= not stray
            print(f"{label:>12} {kind:>7}: {sum(on.values())}/{sum(on.values()) + sum(off.values())} nodes on the HTP"
                  f"{', elsewhere: ' + ', '.join(f'{op} {n}' for op, n in off.items()) if off else ''}"
                  f"{' — NOT ALLOWED: ' + str(stray) if stray else ''}")
        cached = {kind: os.path.join(contexts, f"{kind}_ctx.onnx") for kind in graphs}
        written = all(os.path.exists(p) for p in cached.values())
        second, second_s = qnn_sessions(devices, cached, None) if written else (first, float("nan"))
        binaries = sorted(f for f in os.listdir(contexts) if f.endswith(".bin"))
        ok &= written
        print(f"{label:>12} first start (prepare both graphs, write the context models) {first_s:.1f} s; "
              f"second start (load {', '.join(binaries) or 'NOTHING WRITTEN'}) {second_s:.1f} s")

        error, steps = 0.0, []
        for length in prompts or (chunk + chunk // 2, chunk // 2 + 1):
            prompt = [int(t) for t in rng.integers(0, 151000, length)]
            cpu = Static(out, names, chunk, context)
            htp = Htp(out, names, chunk, context, second)
            a, b = cpu.run(prompt), htp.run(prompt)
            for _ in range(new_tokens):
                top = np.sort(a)[-2:]
                steps.append((float(top[1] - top[0]), int(np.argmax(a)) == int(np.argmax(b))))
                error = max(error, float(np.max(np.abs(a - b))))
                token = int(np.argmax(a))
                a, b = cpu.run([token]), htp.run([token])
        decided = [same for margin, same in steps if margin > error]
        ok &= all(decided)
        print(f"{label:>12} fp16 error e (largest |logit difference|) {error:.3f}; top tokens equal at "
              f"{sum(s for _, s in steps)}/{len(steps)} steps; {len(decided)} steps with a CPU top-2 margin above e: "
              f"{sum(decided)} equal ({sum(m > 2 * error for m, _ in steps)} above 2e)")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dirs", nargs="+")
    ap.add_argument("--plugin", default=os.environ.get("QWENEDGE_EP_QNN"))
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--prompts", type=int, nargs="*", default=[], help="prompt lengths (default: 1.5 and 0.5 chunks)")
    args = ap.parse_args()
    if not args.plugin:
        raise SystemExit("check_htp: --plugin or QWENEDGE_EP_QNN (deploy/fetch-ep-plugin.sh qnn prints it)")
    ort.set_default_logger_severity(3)
    ort.register_execution_provider_library(EP, args.plugin)
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP]
    if not devices:
        raise SystemExit(f"check_htp: {args.plugin} offers no device here")
    rng = np.random.default_rng(9)
    ok = all([check(d, devices, args.chunk, args.context, args.tokens, args.prompts, rng) for d in args.model_dirs])
    print("static graphs on the HTP: " + ("all checks hold" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
