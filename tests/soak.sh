#!/usr/bin/env bash
# The soak (tests/e2e/soak.rs) at full length: mixed traffic over the socket, MQTT, the OpenAI and
# Ollama APIs and Wyoming for --minutes (default 30), the broker restarted every 60 s and a
# SIGHUP every 90 s. Fails unless every request got exactly one terminal event, resident memory
# grew by less than 5% after the warm-up, and file descriptors and threads stayed flat; prints
# the figures as one JSON line ("soak: {...}"). The test run (deploy/test.sh) runs the same test
# for 3 minutes.
#
# Needs what deploy/test.sh sets up (fixtures, ONNX Runtime, the client venv, mosquitto); the
# environment variables it exports are found the same way here when unset.
#
# usage: tests/soak.sh [--minutes N]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=30
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    *) echo "usage: tests/soak.sh [--minutes N]" >&2; exit 2 ;;
  esac
done
python=$(models/venv.sh | tail -n1)
: "${QWENEDGE_FIXTURES:=$("$python" models/fixtures/generate.py | tail -n1)}"
: "${ORT_DYLIB_PATH:=$(deploy/fetch-onnxruntime.sh | tail -n1)}"
: "${QWENEDGE_CLIENT_PYTHON:=$(tests/clients/venv.sh | tail -n1)}"
export QWENEDGE_FIXTURES ORT_DYLIB_PATH QWENEDGE_CLIENT_PYTHON QWENEDGE_SOAK_MINUTES="$minutes"
exec cargo test --release --locked -p qwenedge --features e2e --test e2e soak:: -- --nocapture
