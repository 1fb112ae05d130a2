#!/usr/bin/env bash
# The whole test suite from a fresh Debian machine: packages, the fixture Python environment
# (cached), the generated test models (cached), the ONNX Runtime library (cached), then
# `cargo fmt --check` and `cargo clippy -D warnings`, every cargo test against the fixtures (the
# soak among them, for 3 minutes), the engine-panic and runtime-error tests (a build with the
# test-only `fault-injection` feature), then the package test (tests/package-deb.sh) and the
# aarch64 build under emulation (tests/aarch64-qemu.sh). Expensive parts live in $QWENEDGE_CACHE (default ~/.cache/qwenedge),
# so a second run only rebuilds what changed. On a slow or busy machine, QWENEDGE_TEST_TIME_SCALE
# (default 1) multiplies every wait of the tests (README: Tests).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
cache="${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}"
# Free disk in GiB where the build and the caches live (a full disk fails tests far from its cause).
free_gib() { df -Pk "$@" | awk 'NR > 1 && ($4 / 1048576) < m || NR == 2 { m = $4 / 1048576 } END { printf "%.1f", m }'; }
mkdir -p "$cache"
echo "test: $(free_gib . "$cache" "${TMPDIR:-/tmp}") GiB free (a clean run takes about 15 GiB: README, Tests)" >&2
scale="${QWENEDGE_TEST_TIME_SCALE:-1}"
if ! [[ "$scale" =~ ^[0-9]*\.?[0-9]+$ ]] || ! awk -v s="$scale" 'BEGIN { exit !(s + 0 > 0) }'; then
  echo "test: QWENEDGE_TEST_TIME_SCALE='$scale' is not a positive number (it multiplies every wait of the tests)" >&2
  exit 2
fi
deploy/install-deps.sh test
python=$(models/venv.sh | tail -n1)
echo "test: fixtures" >&2
fixtures=$("$python" models/fixtures/generate.py | tail -n1)
ortlib=$(deploy/fetch-onnxruntime.sh | tail -n1)
# The vendors' execution-provider plugins from PyPI (tests/e2e/plugin_eps.rs), cached.
ep_qnn=$(deploy/fetch-ep-plugin.sh qnn | tail -n1)
ep_openvino=$(deploy/fetch-ep-plugin.sh openvino | tail -n1)
export QWENEDGE_EP_QNN="$ep_qnn" QWENEDGE_EP_OPENVINO="$ep_openvino"
# qemu-user >= 10: an Intel CPU emulated for the OpenVINO plugin on other makers' machines
# (tests/e2e/plugin_eps.rs), and an aarch64 board (tests/aarch64-qemu.sh).
tests/qemu-user.sh
# The HTTP tests' client libraries (openai, ollama at Home Assistant's pin, jsonschema,
# prometheus_client) in a small venv of their own.
client_python=$(tests/clients/venv.sh | tail -n1)
# The fixture environment's python converts the fixtures into the Hub's layout (tests/e2e/layouts.rs).
export QWENEDGE_FIXTURES="$fixtures" ORT_DYLIB_PATH="$ortlib" QWENEDGE_CLIENT_PYTHON="$client_python" QWENEDGE_FIXTURE_PYTHON="$python"
echo "test: fixtures at $QWENEDGE_FIXTURES, ONNX Runtime at $ORT_DYLIB_PATH" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
set +e
echo "test: cargo fmt --check" >&2
cargo fmt --all --check >&2
fmt=$?
echo "test: cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --release --workspace --all-targets --locked --features fault-injection,e2e -- -D warnings >&2
clippy=$?
cargo test --release --workspace --locked --features e2e --no-fail-fast 2>&1 | tee "$log"
tests=${PIPESTATUS[0]}
# The panic and runtime-error tests need the binary built with the test-only feature; the
# suite above and the package below use the binary without it.
cargo test --release --workspace --locked --features fault-injection,e2e --test faults 2>&1 | tee -a "$log"
panic_test=${PIPESTATUS[0]}
set -e
for rc in "$fmt" "$clippy" "$tests" "$panic_test"; do
  [ "$rc" -eq 0 ] || status=1
done
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
word() { [ "$1" -eq 0 ] && echo ok || echo "FAILED (status $1)"; }
summary="cargo fmt --check: $(word "$fmt"); clippy: $(word "$clippy"); cargo test: $passed passed, $failed failed (status $tests; fault-injection tests $(word "$panic_test"))"

# The scripted checks, each run even when an earlier part failed, so one run shows everything.
# The package test installs into a scratch root and the Home Assistant test uses a chroot: both
# need root.
# Home Assistant Core itself (a chroot built once and cached) drives the daemon: tests/ha/run.sh.
scripts=(tests/intents/differential.sh tests/ha/run.sh tests/package-deb.sh tests/aarch64-qemu.sh)
for script in "${scripts[@]}"; do
  echo "test: $script" >&2
  t0=$(date +%s)
  set +e
  if [ "$(id -u)" -eq 0 ] || { [ "$script" != tests/package-deb.sh ] && [ "$script" != tests/ha/run.sh ]; }; then
    "$script"
  else
    sudo --preserve-env=QWENEDGE_FIXTURES,QWENEDGE_CACHE,QWENEDGE_CLIENT_PYTHON,PATH "$script"
  fi
  rc=$?
  set -e
  summary="$summary; $script: $([ "$rc" -eq 0 ] && echo ok || echo "FAILED (status $rc)") in $(( $(date +%s) - t0 ))s"
  [ "$rc" -eq 0 ] || status=1
done
used=$(du -sk target "$cache" 2>/dev/null | awk '{ s += $1 } END { printf "%.1f", s / 1048576 }')
echo "test summary: $summary; $(( $(date +%s) - started ))s total (time scale $scale); target and cache $used GiB, $(free_gib . "$cache") GiB free"
exit "$status"
