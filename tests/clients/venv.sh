#!/usr/bin/env bash
# Creates (once) the Python environment of the HTTP tests' client libraries (tests/clients/
# requirements.txt: openai, ollama at Home Assistant's pin, jsonschema, prometheus_client). It
# is keyed by a hash of the requirements and lives outside the repository:
# $QWENEDGE_CACHE/clients-<hash> (QWENEDGE_CACHE defaults to ~/.cache/qwenedge). Small (tens of
# MB, seconds to install). Prints the venv's python as the last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
req="$here/requirements.txt"
cache="${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}"
key=$(sha256sum "$req" | cut -c1-12)
venv="$cache/clients-$key"
if [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]; then
  echo "$venv/bin/python"
  exit 0
fi
python=$(command -v python3 || true)
[ -n "$python" ] || { echo "clients venv: python3 is required" >&2; exit 1; }
mkdir -p "$cache"
rm -rf "$venv"
echo "clients venv: installing the HTTP test clients into $venv" >&2
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet -r "$req" >&2
touch "$venv/.complete"
echo "$venv/bin/python"
