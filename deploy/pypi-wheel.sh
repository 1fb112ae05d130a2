#!/usr/bin/env bash
# Downloads one pinned wheel from PyPI and checks its sha256: the one way this project fetches
# binaries (deploy/fetch-onnxruntime.sh, deploy/fetch-ep-plugin.sh).
#
# usage: deploy/pypi-wheel.sh CALLER PACKAGE==VERSION PLATFORM SHA256 DIR
#   CALLER    the name error messages start with
#   PLATFORM  a wheel platform tag (manylinux_2_28_x86_64)
# Puts the wheel into DIR and prints its path as the last line.
set -euo pipefail
[ $# -eq 5 ] || { echo "usage: deploy/pypi-wheel.sh CALLER PACKAGE==VERSION PLATFORM SHA256 DIR" >&2; exit 2; }
caller="$1" requirement="$2" platform="$3" sha256="$4" dir="$5"
python=$(command -v python3 || true)
[ -n "$python" ] || { echo "$caller: python3 with pip is needed to download from PyPI" >&2; exit 1; }
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --platform "$platform" --python-version 3.11 "$requirement" -d "$dir" >&2
wheel=$(ls "$dir"/*.whl)
got=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$got" != "$sha256" ]; then
  echo "$caller: checksum mismatch for $(basename "$wheel"): got $got, expected $sha256" >&2
  exit 1
fi
echo "$wheel"
