#!/usr/bin/env bash
# The sentence templates' speed beside Python hassil's, measured in one run on one machine:
# `qwenedge bench --local-intents` over Home Assistant's own English test sentences (1,110, each
# with its test file's home), adversarial inputs, and a daemon answering from the templates
# (with --model, while it generates 2,000 tokens in the background). Not part of the test suite:
# speed goals are checked here, never by timed tests.
#
# usage: models/bench_local_intents.sh [--language en] [--model DIR [--threads N]]
set -euo pipefail
cd "$(dirname "$0")/.."
language=en
model_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --language) language=$2; shift 2 ;;
    --model) model_args+=(--model "$2"); shift 2 ;;
    --threads) model_args+=(--threads "$2"); shift 2 ;;
    *) echo "bench_local_intents: unknown argument $1" >&2; exit 2 ;;
  esac
done
python=$(tests/clients/venv.sh | tail -n1)
cargo build --release --locked --bin qwenedge >&2
corpus=$(mktemp --suffix=.jsonl)
trap 'rm -f "$corpus"' EXIT
"$python" daemon/sentences/tools/corpus.py tests/intents/ha-intents/tests "$language" > "$corpus"
target/release/qwenedge bench --local-intents --language "$language" --corpus "$corpus" --hassil-python "$python" "${model_args[@]}"
