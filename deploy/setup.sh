#!/usr/bin/env bash
# Quick start on a fresh Debian machine: build qwenedge, fetch the ONNX Runtime library, prepare
# a model and answer one prompt.
#
# usage: deploy/setup.sh ["your prompt"]
# The model is the real Qwen3.5-0.8B (q4, the ONNX export published on the Hugging Face Hub,
# pulled by `qwenedge model pull`: no torch, only the files of that variant) when the Hub
# (HF_ENDPOINT, default huggingface.co) is reachable; otherwise a random-weight model of the same
# shape is generated from PyPI packages — its answers are gibberish, but speed and memory are
# the real thing. Set QWENEDGE_MODEL=DIR to use a model directory you already have.
set -euo pipefail
cd "$(dirname "$0")/.."
prompt="${1:-In one sentence, why run a voice assistant without the cloud?}"
deploy/install-deps.sh
cargo build --release --locked
deploy/fetch-onnxruntime.sh >/dev/null
if [ -n "${QWENEDGE_MODEL:-}" ]; then
  model="$QWENEDGE_MODEL"
# Reachable: any HTTP answer (an error status too) within 10 s.
elif hub="${HF_ENDPOINT:-https://huggingface.co}" && python3 -c '
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=10)
except urllib.error.HTTPError:
    pass' "$hub" 2>/dev/null &&
  model=$(target/release/qwenedge model pull "${QWENEDGE_REPO:-onnx-community/Qwen3.5-0.8B-ONNX-OPT}" | tail -n1) && [ -n "$model" ]; then
  :
else
  echo "setup: no model from $hub (not reachable, or the pull failed: see above) — using a random-weight model of the Qwen3.5-0.8B shape (answers are gibberish; speed and memory are real)" >&2
  python=$(models/venv.sh | tail -n1)
  model="$("$python" models/fixtures/generate.py --preset 0.8b | tail -n1)/int4"
fi
echo "setup: model $model" >&2
# Commands Home Assistant's sentence templates match are answered locally, without the model.
echo '{"text": "turn on the kitchen light", "devices": [{"name": "Kitchen Light", "domain": "light"}]}' |
  target/release/qwenedge intents match >&2
exec target/release/qwenedge generate --model "$model" --chat --max-tokens 64 --prompt "$prompt"
