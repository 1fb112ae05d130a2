#!/usr/bin/env bash
# The long mode of the parser property tests (the `fuzz` modules of daemon/src, daemon/http and
# daemon/wyoming): every parser that takes bytes
# from outside, 1,000,000 cases each (the configuration file, which is written to disk per case,
# 100,000). Prints each parser's time. Not part of CI (which runs 10,000 cases each).
#
# Then the model directory reader (tests/e2e/bad_models.rs: genai_config.json and model.onnx
# damaged at random, a small tokenizer.json damaged at random), the same number of cases.
#
# usage: tests/fuzz-long.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-1000000}"
export QWENEDGE_PROPTEST_CASES="$cases"
cargo test --release --locked -p qwenedge -p qwenedge-http -p qwenedge-wyoming --lib --no-run
for t in socket_requests mqtt_requests hermes_queries http_bodies wyoming_frames configuration_files intent_catalogs; do
  case "$t" in
    http_bodies) crate=qwenedge-http ;;
    wyoming_frames) crate=qwenedge-wyoming ;;
    *) crate=qwenedge ;;
  esac
  start=$(date +%s%N)
  cargo test --release --locked -p "$crate" --lib -q "fuzz::$t" -- --exact > /dev/null
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  n=$cases
  [ "$t" = configuration_files ] && n=$((cases / 10))
  [ "$t" = http_bodies ] && n="2 x $cases"
  printf 'fuzz-long: %-20s %s cases  %d.%01d s  ok\n' "$t" "$n" $((ms / 1000)) $((ms % 1000 / 100))
done
start=$(date +%s%N)
cargo test --release --locked -p qwenedge --features e2e --test e2e -q bad_models::random_damage > /dev/null
ms=$(( ($(date +%s%N) - start) / 1000000 ))
printf 'fuzz-long: %-20s %s cases  %d.%01d s  ok\n' "model_files" "2 x $cases" $((ms / 1000)) $((ms % 1000 / 100))
