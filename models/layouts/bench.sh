#!/usr/bin/env bash
# The OPT layout (onnx-community/Qwen3.5-0.8B-ONNX-OPT's: embedding graph + decoder taking
# inputs_embeds, 3-row positions, num_logits_to_keep) beside the onnxruntime-genai builder's
# export of the same weights, and the Scan layout (onnx-community/Qwen3.5-0.8B-ONNX's: the Gated
# DeltaNet in standard ops, an ONNX Scan over time), in the same run: `qwenedge bench` on each,
# alternating, ROUNDS rounds; prints each round's figures and the medians' ratios (layout / builder).
# The model is the random-weight 0.8B of models/fixtures/generate.py --preset 0.8b (the real
# shape; speed and memory are the real model's), converted once into
# $QWENEDGE_CACHE/layouts-0.8b-<layout>-<hash of layouts.py>.
#
# usage: models/layouts/bench.sh [ROUNDS] [THREADS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
rounds=${1:-3}
threads=${2:-2}
cache=${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}
python=$(models/venv.sh | tail -n1)
preset=$("$python" models/fixtures/generate.py --preset 0.8b | tail -n1)
builder="$preset/int4"
key=$(sha256sum "$here/layouts.py" | cut -c1-12)
for layout in opt scan; do
  dir="$cache/layouts-0.8b-$layout-$key"
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir.partial"
    "$python" "$here/layouts.py" "--$layout" "$builder" "$preset/hf" "$dir.partial" >&2
    touch "$dir.partial/.complete"
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
  fi
done
# Conversions by an earlier layouts.py.
find "$cache" -maxdepth 1 -name 'layouts-0.8b-*' ! -name "*-$key" -exec rm -rf {} +
cargo build --release --locked -q
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for round in $(seq "$rounds"); do
  for which in builder opt scan; do
    dir=$builder
    [ "$which" != builder ] && dir="$cache/layouts-0.8b-$which-$key"
    line=$(target/release/qwenedge bench -m "$dir" --threads "$threads" --prompt-tokens 128 --new-tokens 64 --runs 3 2>/dev/null | tail -n1)
    echo "$which $line" | tee -a "$out"
  done
done
"$python" - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    which, data = line.split(" ", 1)
    rows.setdefault(which, []).append(json.loads(data))
keys = ["prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb", "load_ms"]
med = {w: {k: statistics.median(r[k] for r in rs) for k in keys} for w, rs in rows.items()}
summary = {"rounds": len(rows["opt"]), **med,
           **{f"{w}_over_builder": {k: round(med[w][k] / med["builder"][k], 3) for k in keys} for w in ("opt", "scan")}}
print(json.dumps(summary))
PY
