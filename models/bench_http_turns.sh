#!/usr/bin/env bash
# Home Assistant's conversation over the Ollama API, first turn against second: the daemon
# serves a model over HTTP, and the Ollama client (Home Assistant's pin) sends a conversation's
# first turn (system prompt with the exposed entities, the tools, the user's words) and its
# second (the tool call and its result), as Home Assistant does. The second turn starts from the
# prefix the first one left in the cache. Prints the time to first token of both turns (median
# over the rounds, measured at the client), the prompt sizes, the share reused and the ratio.
# Not part of the test suite.
#
# usage: models/bench_http_turns.sh [--model DIR] [--threads 2] [--rounds 5]
#   --model   default: the random-weight 0.8B-shaped int4 model (generated on first use)
set -euo pipefail
cd "$(dirname "$0")/.."
model="" threads=2 rounds=5
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "bench_http_turns: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$model" ]; then
  model="$("$(models/venv.sh | tail -n1)" models/fixtures/generate.py --preset 0.8b | tail -n1)/int4"
fi
client=$(tests/clients/venv.sh | tail -n1)
cargo build --release --locked >&2
lib=$(deploy/fetch-onnxruntime.sh | tail -n1)
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$("$client" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$dir/config.toml" <<CONF
[model]
path = "$model"
threads = $threads
[socket]
path = "$dir/q.sock"
[cache]
pin_intents = false
# The model's turns are measured: commands the sentence templates match would be answered
# without it.
[intents]
local = "off"
[http]
enabled = true
listen = "127.0.0.1:$port"
model_name = "bench"
CONF
ORT_DYLIB_PATH="$lib" target/release/qwenedge serve --config "$dir/config.toml" 2> "$dir/daemon.log" &
pid=$!
for _ in $(seq 600); do
  "$client" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health')" 2>/dev/null && break
  sleep 0.2
done
"$client" tests/clients/bench_turns.py --base-url "http://127.0.0.1:$port" --model bench --rounds "$rounds" --label "$model, $threads threads"
