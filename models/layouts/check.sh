#!/usr/bin/env bash
# Converts the test fixtures' builder exports into the layout users download from the Hugging
# Face Hub (onnx-community/Qwen3.5-*-ONNX-OPT) and checks the result with onnxruntime and with
# transformers.js itself (layouts.py says what and why). Needs the generated fixtures
# (QWENEDGE_FIXTURES, else it runs the generator) and Node 20 with npm; transformers.js and
# onnxruntime-node are installed once into $QWENEDGE_CACHE/layout-check-<hash of package.json>.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
cache=${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}
python=$(models/venv.sh | tail -n1)
fixtures=${QWENEDGE_FIXTURES:-$("$python" models/fixtures/generate.py | tail -n1)}
node_dir="$cache/layout-check-$(sha256sum "$here/package.json" | cut -c1-12)"
if [ ! -f "$node_dir/.complete" ]; then
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp "$here/package.json" "$node_dir/"
  # onnxruntime-node ships its CPU library; its install step only fetches GPU libraries.
  (cd "$node_dir" && ONNXRUNTIME_NODE_INSTALL=skip npm install --no-audit --no-fund --silent >&2)
  touch "$node_dir/.complete"
fi
cp "$here/greedy.mjs" "$node_dir/greedy.mjs"   # ES modules resolve imports from the script's place
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$python" "$here/layouts.py" "$fixtures" "$out" "$node_dir"
