#!/usr/bin/env bash
# The Home Assistant test: Home Assistant Core 2026.11.0 (a chroot built once by setup.sh and
# cached) drives the daemon through its own Wyoming and Ollama integrations, and the daemon takes
# the home's names from it (check_ha.py says what is checked). Needs root (chroot, a /proc
# mount inside it), QWENEDGE_FIXTURES and QWENEDGE_CLIENT_PYTHON (deploy/test.sh sets them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
: "${QWENEDGE_FIXTURES:?set it to the generated fixtures (deploy/test.sh does)}"
: "${QWENEDGE_CLIENT_PYTHON:?set it to the test clients venv python (tests/clients/venv.sh)}"
root=$("$here/setup.sh" | tail -n1)
cargo build --release --locked --bin qwenedge >&2
work=$(mktemp -d)
state="$root/srv/qwenedge-test"
cleanup() {
  umount -l "$root/proc" 2>/dev/null || true
  rm -rf --one-file-system "$state"
  if [ "${keep:-0}" = 1 ]; then echo "ha test: logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
rm -rf --one-file-system "$state"
mkdir -p "$state"
cp "$here/configuration.yaml" "$state/configuration.yaml"
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
set +e
PYTHONPATH="$here" "$QWENEDGE_CLIENT_PYTHON" "$here/check_ha.py" --root "$root" --binary target/release/qwenedge \
  --model "$QWENEDGE_FIXTURES/tiny-a/int4" --work "$work"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  keep=1
  cp "$state/home-assistant.log" "$work/" 2>/dev/null || true
  tail -n 40 "$work/qwenedge.log" >&2 || true
fi
exit "$rc"
