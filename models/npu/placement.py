#!/usr/bin/env python3
"""Shows where ONNX Runtime places a model's nodes with the QNN execution provider plugin:
nodes per provider by op type, the partitions, and why QNN declined the rest (the provider's
"Validation FAILED ... REASON : ..." lines from a verbose log, grouped, each node counted once).
With --compare-cpu it also runs one decode step with the same feeds on the CPU provider and on
QNN and compares the outputs (the model needs static shapes: static_graphs.py). On x86-64 the
QNN HTP backend is a simulator, so the timings say nothing about NPU speed.

usage: placement.py MODEL PLUGIN_LIB [--options JSON] [--compare-cpu] [--log FILE]
  PLUGIN_LIB     libonnxruntime_providers_qnn.so (deploy/fetch-ep-plugin.sh qnn)
  --options      QNN provider options as JSON (default {"backend_type": "htp"})
  --log          keep the verbose ONNX Runtime log of the session creation there
The last line is JSON with the figures.
"""
import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict

import numpy as np
import onnxruntime as ort

EP = "QNNExecutionProvider"


@contextlib.contextmanager
def captured(file):
    """Sends what ONNX Runtime and the QNN libraries write to stdout and stderr to `file`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(file.fileno(), 1)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in enumerate(saved, 1):
            os.dup2(copy, fd)
            os.close(copy)


def create_session(model, devices, options, log):
    """A session with QNN, its verbose log (the reasons for declined nodes) captured in `log`."""
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    so.log_severity_level = 0
    so.add_provider_for_devices(devices, options)
    with captured(log):
        return ort.InferenceSession(model, so)


def rejections(log_text):
    """{(op type, reason): {node names}} from the provider's validation messages."""
    found = defaultdict(set)
    for block in re.split(r"\n(?=\S)", log_text):
        if "Validation FAILED" not in block:
            continue
        nodes = re.findall(r"Operator type: (\S+) Node name: (.*?) Node index:", block)
        reason = re.search(r"REASON : (.*)", block)
        for op, name in nodes:
            text = reason.group(1).strip() if reason else "?"
            text = re.sub(r"\w+ node `[^`]*` will not be assigned to QNN EP\.", "", text)
            found[(op, text)].add(name)
    return found


def feeds_for(session):
    """One decode step: a token at the last position of a full mask, random states."""
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
    inputs = session.get_inputs()
    if any(not isinstance(d, int) for i in inputs for d in i.shape):
        raise SystemExit("placement: --compare-cpu needs static shapes (static_graphs.py)")
    context = next(i.shape[-1] for i in inputs if i.name == "attention_mask")
    rng = np.random.default_rng(0)
    feeds = {}
    for i in inputs:
        if i.name == "input_ids":
            feeds[i.name] = np.full(i.shape, 1234, np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones(i.shape, np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.full(i.shape, context - 1, np.int64)
        else:
            feeds[i.name] = (rng.standard_normal(i.shape) * 0.5).astype(types[i.type])
    return feeds


def compare(model, qnn):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    cpu = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feeds = feeds_for(cpu)
    results = {}
    for name, session in (("cpu", cpu), ("qnn", qnn)):
        start = time.time()
        with open(os.devnull, "w") as devnull, captured(devnull):   # the session logs verbosely
            results[name] = session.run(None, feeds)
        print(f"{name}: one step in {time.time() - start:.3f}s")
    names = [o.name for o in cpu.get_outputs()]
    diffs = {n: float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max())
             for n, a, b in zip(names, results["cpu"], results["qnn"])}
    logits_cpu, logits_qnn = (results[k][names.index("logits")][0, -1] for k in ("cpu", "qnn"))
    out = {"logits_maxabs": float(np.abs(logits_cpu).max()), "logits_maxdiff": diffs.pop("logits"),
           "states_maxdiff": max(diffs.values(), default=0.0),
           "argmax_cpu": int(logits_cpu.argmax()), "argmax_qnn": int(logits_qnn.argmax())}
    out["argmax_agree"] = out["argmax_cpu"] == out["argmax_qnn"]
    print("compare: logits |max| %.3g, max diff %.4g; states max diff %.4g; argmax cpu %d qnn %d"
          % (out["logits_maxabs"], out["logits_maxdiff"], out["states_maxdiff"],
             out["argmax_cpu"], out["argmax_qnn"]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("plugin_lib")
    ap.add_argument("--options", default='{"backend_type": "htp"}')
    ap.add_argument("--compare-cpu", action="store_true")
    ap.add_argument("--log")
    args = ap.parse_args()
    options = json.loads(args.options)

    ort.set_default_logger_severity(3)
    ort.register_execution_provider_library(EP, args.plugin_lib)
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP]
    if not devices:
        raise SystemExit(f"placement: {args.plugin_lib} offers no device here")
    print("devices:", ", ".join(f"{d.device.type.name} vendor {d.device.vendor_id:#06x}" for d in devices))
    print("options:", json.dumps(options))

    print("creating the session (the HTP graph preparation can take minutes)...", flush=True)
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        start = time.time()
        try:
            session = create_session(args.model, devices, options, log)
        except Exception as e:
            session, error = None, str(e)
        load_s = time.time() - start
        log.seek(0)
        text = log.read()
        if args.log:
            shutil.copyfile(log.name, args.log)
    if session is None:
        errors = [line for line in text.splitlines() if "[E:" in line]
        if errors:
            print("\n".join(errors[-20:]))
        print(json.dumps({"model": args.model, "error": error}))
        sys.exit(1)

    nodes, partitions = Counter(), Counter()
    ops = defaultdict(Counter)
    for sg in session.get_provider_graph_assignment_info():
        partitions[sg.ep_name] += 1
        for n in sg.get_nodes():
            nodes[sg.ep_name] += 1
            ops[sg.ep_name][n.op_type] += 1
    total = sum(nodes.values())
    print(f"{args.model}: session created in {load_s:.1f}s")
    for ep in sorted(nodes, key=lambda e: e != EP):
        print(f"{ep}: {nodes[ep]}/{total} nodes in {partitions[ep]} partition(s)")
        print("   ", ", ".join(f"{op} {c}" for op, c in ops[ep].most_common()))
    declined = rejections(text)
    if declined:
        print("declined by QNN (nodes, op type: reason):")
        for (op, reason), names in sorted(declined.items(), key=lambda kv: -len(kv[1])):
            print(f"  {len(names):4d}  {op}: {reason}")

    result = {"model": args.model, "options": options, "load_s": round(load_s, 1), "nodes_total": total,
              "nodes": dict(nodes), "partitions": dict(partitions),
              "declined": {f"{op}: {reason}": len(names) for (op, reason), names in declined.items()}}
    if args.compare_cpu:
        result["compare"] = compare(args.model, session)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
