#!/bin/sh
# Writes data/intents and data/numbers again from the pinned PyPI packages, then data/SHA256SUMS.
# Needs python3 with venv and PyPI access; run from anywhere.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q hassil==3.12.1 home-assistant-intents==2026.8.28 unicode-rbnf==2.4.1
src=$("$venv/bin/python" -c 'import home_assistant_intents, os; print(os.path.dirname(home_assistant_intents.__file__))')
rm -rf "$here/data/intents" "$here/data/numbers"
mkdir -p "$here/data/intents"
cp "$src"/data/*.json "$here/data/intents/"
"$venv/bin/python" "$here/tools/number_words.py" "$here/data/intents" "$here/data/numbers"
cd "$here/data" && find intents numbers -type f | sort | xargs sha256sum > SHA256SUMS
echo "data written; review 'git diff --stat' before committing"
