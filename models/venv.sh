#!/usr/bin/env bash
# Creates (once) the Python environment used to build test fixtures, export models and run the
# onnxruntime-genai peer benchmark. It is keyed by a hash of models/requirements.txt and lives
# outside the repository: $QWENEDGE_CACHE/venv-<hash> (QWENEDGE_CACHE defaults to
# ~/.cache/qwenedge). The daemon itself never needs it. Prints the venv's python as the last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
req="$here/requirements.txt"
cache="${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}"
key=$(sha256sum "$req" | cut -c1-12)
venv="$cache/venv-$key"
if [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]; then
  echo "$venv/bin/python"
  exit 0
fi
python=$(command -v python3 || true)
[ -n "$python" ] || { echo "venv: python3 is required" >&2; exit 1; }
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "venv: python3's venv module is missing (Debian: apt-get install python3-venv)" >&2
  exit 1
fi
mkdir -p "$cache"
rm -rf "$venv"
echo "venv: installing the fixture toolchain into $venv (torch, transformers, onnxruntime-genai; several GB, a few minutes)" >&2
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet -r "$req" >&2
touch "$venv/.complete"
echo "$venv/bin/python"
