#!/usr/bin/env bash
# The differential test of the sentence templates: tests/intents/differential.py compares the
# release binary's matcher with hassil 3.12.1 itself (in the test clients' venv) on sentences
# generated from every template of all 63 languages and on spoiled ones. Prints the summary;
# fails listing the differences.
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${QWENEDGE_CLIENT_PYTHON:-$(tests/clients/venv.sh | tail -n1)}"
cargo build --release --locked --bin qwenedge >&2
"$python" tests/intents/differential.py target/release/qwenedge daemon/sentences/data "$@"
