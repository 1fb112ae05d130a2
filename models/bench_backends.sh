#!/usr/bin/env bash
# Benchmarks qwenedge's two backends on the same model directory, same machine, same thread
# count, in one run: ONNX Runtime and the pure-Rust tract backend, alternately, and prints both
# results and the ratios (tract / ONNX Runtime). Not part of the test suite.
#
# usage: models/bench_backends.sh [--model DIR] [--threads 2] [--prompt-tokens 128] [--new-tokens 64]
#                                 [--runs 3] [--rounds 3]
#   --model   default: the random-weight 0.8B-shaped int4 model (generated on first use)
#   --rounds  the two backends run alternately this many times (each round: --runs measured runs
#             after a warm-up); the median over rounds is reported
set -euo pipefail
cd "$(dirname "$0")/.."
. models/bench_lib.sh
bench_setup bench_backends "$@"
ort=() tract=()
for round in $(seq "$rounds"); do
  echo "bench_backends: round $round of $rounds" >&2
  ort+=("$(ORT_DYLIB_PATH="$lib" target/release/qwenedge bench --backend ort "${args[@]}" | tail -n1)")
  tract+=("$(target/release/qwenedge bench --backend tract "${args[@]}" | tail -n1)")
done
"$python" models/bench_compare.py "$model" "${#tract[@]}" tract onnxruntime "${tract[@]}" "${ort[@]}"
