#!/usr/bin/env bash
# Benchmarks qwenedge against onnxruntime-genai on the same model directory, same machine, same
# thread count, in one run, and prints both results and the ratios. Not part of the test suite
# (speed goals are checked here, never by timed tests).
#
# usage: models/bench_vs_peer.sh [--model DIR] [--threads 2] [--prompt-tokens 128] [--new-tokens 64]
#                                [--runs 3] [--rounds 3]
#   --model   default: the random-weight 0.8B-shaped int4 model (generated on first use)
#   --rounds  the two engines run alternately this many times (each round: --runs measured runs
#             after a warm-up); the median over rounds is reported, so a noisy neighbour on a
#             shared machine hits both sides alike
set -euo pipefail
cd "$(dirname "$0")/.."
model="" threads=2 prompt=128 new=64 runs=3 rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --prompt-tokens) prompt="$2"; shift 2 ;;
    --new-tokens) new="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "bench_vs_peer: unknown argument $1" >&2; exit 2 ;;
  esac
done
python=$(models/venv.sh | tail -n1)
if [ -z "$model" ]; then
  model="$("$python" models/fixtures/generate.py --preset 0.8b | tail -n1)/int4"
fi
cargo build --release --locked >&2
lib=$(deploy/fetch-onnxruntime.sh | tail -n1)
args=(--model "$model" --threads "$threads" --prompt-tokens "$prompt" --new-tokens "$new" --runs "$runs")
# Warm the page cache once so neither side pays for the first read of the weights.
cat "$model/model.onnx.data" > /dev/null
ours=() peer=()
for round in $(seq "$rounds"); do
  echo "bench_vs_peer: round $round of $rounds" >&2
  ours+=("$(ORT_DYLIB_PATH="$lib" target/release/qwenedge bench "${args[@]}" | tail -n1)")
  peer+=("$("$python" models/bench_peer.py "${args[@]}" | tail -n1)")
done
"$python" - "$model" "${#ours[@]}" "${ours[@]}" "${peer[@]}" <<'PY'
import json, os, statistics, sys
model, n = sys.argv[1], int(sys.argv[2])
runs = [json.loads(x) for x in sys.argv[3:]]
def summary(rs):
    out = dict(rs[0])
    for key in ("prefill_tok_s", "decode_tok_s", "ttft_ms"):
        out[key] = statistics.median(r[key] for r in rs)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
    out["rounds"] = [{k: r[k] for k in ("prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb")} for r in rs]
    return out
ours, peer = summary(runs[:n]), summary(runs[n:])
data_mb = os.path.getsize(os.path.join(model, "model.onnx.data")) / 2**20
print(f"model {model}  (model.onnx.data {data_mb:.1f} MiB), median of {n} rounds")
print(f"{'':16}{'qwenedge':>12}{'genai':>12}{'ratio':>8}")
for key in ("prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb"):
    print(f"{key:16}{ours[key]:>12.1f}{peer[key]:>12.1f}{ours[key] / peer[key]:>8.2f}")
print(f"{'rss/weights':16}{ours['peak_rss_mb'] / data_mb:>12.2f}{peer['peak_rss_mb'] / data_mb:>12.2f}")
print(json.dumps({"qwenedge": ours, "genai": peer,
                  "decode_ratio": ours["decode_tok_s"] / peer["decode_tok_s"],
                  "prefill_ratio": ours["prefill_tok_s"] / peer["prefill_tok_s"],
                  "rss_over_weights": ours["peak_rss_mb"] / data_mb}))
PY
