#!/usr/bin/env bash
# The OPT layout (onnx-community/Qwen3.5-0.8B-ONNX-OPT's: embedding graph + decoder taking
# inputs_embeds, 3-row positions, num_logits_to_keep) beside the onnxruntime-genai builder's
# export of the same weights, in the same run: `qwenedge bench` on each, alternating, ROUNDS
# rounds; prints each round's figures and the medians' ratios (OPT / builder).
# The model is the random-weight 0.8B of models/fixtures/generate.py --preset 0.8b (the real
# shape; speed and memory are the real model's), converted once into
# $QWENEDGE_CACHE/layouts-0.8b-<hash of layouts.py>.
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
opt="$cache/layouts-0.8b-$(sha256sum "$here/layouts.py" | cut -c1-12)"
if [ ! -f "$opt/.complete" ]; then
  rm -rf "$opt.partial"
  "$python" "$here/layouts.py" --opt "$builder" "$preset/hf" "$opt.partial" >&2
  touch "$opt.partial/.complete"
  rm -rf "$opt"
  mv "$opt.partial" "$opt"
fi
cargo build --release --locked -q
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for round in $(seq "$rounds"); do
  for which in builder opt; do
    dir=$builder
    [ "$which" = opt ] && dir=$opt
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
summary = {"rounds": len(rows["opt"]), "builder": med["builder"], "opt": med["opt"],
           "opt_over_builder": {k: round(med["opt"][k] / med["builder"][k], 3) for k in keys}}
print(json.dumps(summary))
PY
