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
. models/bench_lib.sh
bench_setup bench_vs_peer "$@"
ours=() peer=()
for round in $(seq "$rounds"); do
  echo "bench_vs_peer: round $round of $rounds" >&2
  ours+=("$(ORT_DYLIB_PATH="$lib" target/release/qwenedge bench "${args[@]}" | tail -n1)")
  peer+=("$("$python" models/bench_peer.py "${args[@]}" | tail -n1)")
done
"$python" models/bench_compare.py "$model" "${#ours[@]}" qwenedge genai "${ours[@]}" "${peer[@]}"
