#!/usr/bin/env bash
# Can a Qwen3.5 decoder exported by the onnxruntime-genai builder run on Qualcomm's HTP (NPU)
# through the QNN execution provider? This reproduces the answer on an x86-64 machine, where the
# QNN plugin from PyPI runs the HTP as a simulator:
#   1. the model as exported: QNN takes 2 nodes (a Gather and a Cast); it declines the rest,
#      "Cannot get shape" (dynamic shapes) or an unsupported com.microsoft op;
#   2. static_graphs.py: a decode graph (one token) and a prefill graph (a chunk of CHUNK
#      tokens), shapes fixed, the com.microsoft ops rewritten into standard ONNX;
#   3. both with the HTP options of a Snapdragon X Elite (v73, fp16): every node but the int4
#      embedding (GatherBlockQuantized) on the HTP in one partition, then one step of each on
#      CPU and on the HTP compared (random states and a made-up position: fp16 differences of a
#      few tenths; check_htp.py compares real prompts).
# On a 2-core x86-64 machine it takes about a minute for the tiny test fixture and 10 minutes
# for the 0.8B model (the simulator's HTP graph preparation takes minutes). These timings say
# nothing about NPU speed.
#
# usage: models/npu/try-htp.sh [MODEL_DIR]
#   MODEL_DIR  a builder export (default: the tiny-a int4 test fixture, $QWENEDGE_FIXTURES or
#              $QWENEDGE_CACHE/fixtures/current)
#   CONTEXT    KV-cache length of the static graphs (default 128 for the fixture, else 512)
#   CHUNK      prefill chunk (default 16 for the fixture, else 64)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}"
if [ $# -gt 0 ]; then
  model="$1" context="${CONTEXT:-512}" chunk="${CHUNK:-64}"
else
  model="${QWENEDGE_FIXTURES:-$cache/fixtures/current}/tiny-a/int4" context="${CONTEXT:-128}" chunk="${CHUNK:-16}"
  [ -f "$model/model.onnx" ] || { echo "try-htp: no fixture at $model (models/fixtures/generate.py makes it)" >&2; exit 1; }
fi
plugin=$("$repo/deploy/fetch-ep-plugin.sh" qnn | tail -n1)
python=$("$repo/models/venv.sh" | tail -n1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
options='{"backend_type": "htp", "enable_htp_fp16_precision": "1", "htp_arch": "73", "soc_model": "60"}'

echo "== 1. as exported: $model" >&2
"$python" "$here/placement.py" "$model/model.onnx" "$plugin" --options "$options"
echo "== 2. static graphs (context $context, chunk $chunk), com.microsoft ops rewritten" >&2
"$python" "$here/static_graphs.py" "$model" "$work/static" --context "$context" --chunk "$chunk"
for graph in decode prefill; do
  echo "== 3. $graph on the HTP, compared with CPU" >&2
  "$python" "$here/placement.py" "$work/static/$graph.onnx" "$plugin" --options "$options" --compare-cpu
done
