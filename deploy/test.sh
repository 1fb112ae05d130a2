#!/usr/bin/env bash
# The whole test suite from a fresh Debian machine: packages, the fixture Python environment
# (cached), the generated test models (cached), the ONNX Runtime library (cached), then every
# cargo test against them. Expensive parts live in $QWENEDGE_CACHE (default ~/.cache/qwenedge),
# so a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
deploy/install-deps.sh test
python=$(models/venv.sh | tail -n1)
echo "test: fixtures" >&2
fixtures=$("$python" models/fixtures/generate.py | tail -n1)
ortlib=$(deploy/fetch-onnxruntime.sh | tail -n1)
export QWENEDGE_FIXTURES="$fixtures" ORT_DYLIB_PATH="$ortlib"
echo "test: fixtures at $QWENEDGE_FIXTURES, ONNX Runtime at $ORT_DYLIB_PATH" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
echo "test summary: $passed passed, $failed failed, $(( $(date +%s) - started ))s total (status $status)"
exit "$status"
