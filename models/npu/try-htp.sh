#!/usr/bin/env bash
# Can a Qwen3.5 decoder exported by the onnxruntime-genai builder run on Qualcomm's HTP (NPU)
# through the QNN execution provider? This reproduces the answer on an x86-64 machine, where the
# QNN plugin from PyPI runs the HTP as a simulator:
#   1. the model as exported: QNN takes 2 nodes (a Gather and a Cast); it declines the rest,
#      "Cannot get shape" (dynamic shapes) or an unsupported com.microsoft op;
#   2. static_decode.py: shapes fixed for one decode step, those ops rewritten into plain ONNX;
#   3. that model with the HTP options of a Snapdragon X Elite (v73, fp16) and GroupQueryAttention
#      opted in: every node but the int4 embedding (GatherBlockQuantized) on the HTP in one
#      partition, then one decode step on CPU and on the HTP compared (fp16: logits differ by
#      a few tenths, the argmax should agree).
# On a 2-core x86-64 machine it takes about 25 s for the tiny test fixture and 4 to 6 minutes for
# the 0.8B model: the simulator's HTP graph preparation took 170-221 s and one simulated decode
# step 80-100 s. These timings say nothing about NPU speed.
#
# usage: models/npu/try-htp.sh [MODEL_DIR]
#   MODEL_DIR  a builder export (default: the tiny-a int4 test fixture, $QWENEDGE_FIXTURES or
#              $QWENEDGE_CACHE/fixtures/current)
#   CONTEXT    KV-cache length of the static graph (default 128 for the fixture, else 512)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}"
if [ $# -gt 0 ]; then
  model="$1" context="${CONTEXT:-512}"
else
  model="${QWENEDGE_FIXTURES:-$cache/fixtures/current}/tiny-a/int4" context="${CONTEXT:-128}"
  [ -f "$model/model.onnx" ] || { echo "try-htp: no fixture at $model (models/fixtures/generate.py makes it)" >&2; exit 1; }
fi
plugin=$("$repo/deploy/fetch-ep-plugin.sh" qnn | tail -n1)
python=$("$repo/models/venv.sh" | tail -n1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo '{"op_type": {"GroupQueryAttention": "htp"}}' > "$work/gqa_htp.json"
options='{"backend_type": "htp", "enable_htp_fp16_precision": "1", "htp_arch": "73", "soc_model": "60",
          "op_affinity": "'"$work/gqa_htp.json"'"}'

echo "== 1. as exported: $model" >&2
"$python" "$here/placement.py" "$model/model.onnx" "$plugin" --options "$options"
echo "== 2. static decode step (context $context), com.microsoft ops decomposed" >&2
start=$(date +%s)
"$python" "$here/static_decode.py" "$model" "$work/static" --context "$context"
echo "static_decode: $(( $(date +%s) - start ))s" >&2
echo "== 3. static + decomposed, on the HTP, compared with CPU" >&2
"$python" "$here/placement.py" "$work/static/model.onnx" "$plugin" --options "$options" --compare-cpu
