#!/usr/bin/env bash
# Verifies every Qwen3.5 Small size on its full-width fixture (models/fixtures/specs.py: the
# 0.8B preset at full depth, 2B/4B/9B at their published width and four layers deep; built on
# first use, the 9B one needs about 22 GB of memory to build). For each size:
#   1. greedy text from onnxruntime-genai (the builder's own runtime) equals the daemon's with the
#      ONNX Runtime backend, packed at load and mapped from the optimized model cache;
#   2. the tract backend gives the same text as ONNX Runtime;
#   3. through a running daemon, a raw completion equals itself with the prefix cache off, and a
#      constrained intent request ends in a valid intent event;
#   4. measured peak and final RSS (qwenedge bench, both backends) beside the daemon's memory
#      estimate (qwenedge doctor) at a 4096-token context.
# Not part of CI (the fixtures take ~10 GB of disk and minutes each); figures in the README.
#
#   models/verify-sizes.sh [SIZE...]      # default: 0.8b 2b-width 4b-width 9b-width
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(0.8b 2b-width 4b-width 9b-width)
python=$(models/venv.sh | tail -n1)
cargo build --release --locked >&2
lib=$(deploy/fetch-onnxruntime.sh | tail -n1)
export ORT_DYLIB_PATH="$lib"
bin=target/release/qwenedge
prompt="The kitchen light is on, and the weather today is"
tokens=16
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
failed=0
check() { # name, want, got
  if [ "$2" == "$3" ]; then echo "  ok    $1"; else echo "  FAIL  $1"; echo "        want: $2"; echo "        got:  $3"; failed=1; fi
}
gen() { "$bin" generate -m "$dir" --threads 2 -p "$prompt" --max-tokens $tokens --temperature 0 "$@" 2>/dev/null; }
peak() { # backend flags... → "peak end"
  "$bin" bench -m "$dir" --threads 2 --prompt-tokens 128 --new-tokens 16 "$@" 2>/dev/null |
    "$python" -c 'import json,sys; d=json.loads(sys.stdin.readlines()[-1]); print(round(d["peak_rss_mb"]), round(d["rss_mb"]))'
}
serve() { # cache max_mb → starts the daemon, waits for its socket
  cat > "$work/config.toml" <<CONF
[model]
path = "$dir"
threads = 2
context_length = 4096
[socket]
path = "$work/q.sock"
[cache]
max_mb = $1
dir = "$work/prefix"
optimized_dir = "$work/optimized"
CONF
  rm -f "$work/q.sock"
  "$bin" serve --config "$work/config.toml" 2> "$work/daemon.log" &
  pid=$!
  for _ in $(seq 1200); do [ -S "$work/q.sock" ] && return; sleep 0.25; done
  echo "daemon did not start:" >&2; cat "$work/daemon.log" >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
ask() { "$bin" ask --socket "$work/q.sock" "$@"; }

for size in "${sizes[@]}"; do
  dir="$("$python" models/fixtures/generate.py --preset "$size" | tail -n1)/int4"
  data=$(( $(stat -c %s "$dir/model.onnx.data") >> 20 ))
  echo "== $size ($dir, model.onnx.data $data MiB)"
  genai=$("$python" - "$dir" "$prompt" "$tokens" <<'PY'
import sys
import onnxruntime_genai as og
model = og.Model(sys.argv[1])
tok = og.Tokenizer(model)
params = og.GeneratorParams(model)
ids = tok.encode(sys.argv[2])
params.set_search_options(do_sample=False, max_length=len(ids) + int(sys.argv[3]))
gen = og.Generator(model, params)
gen.append_tokens(ids)
out = []
while not gen.is_done():
    gen.generate_next_token()
    out.append(gen.get_next_tokens()[0])
# Decoded as the tokenizers library does (onnxruntime-genai's own decode stops at the first
# incomplete UTF-8 sequence, which random weights produce often).
from tokenizers import Tokenizer
sys.stdout.write(Tokenizer.from_file(sys.argv[1] + "/tokenizer.json").decode(out, skip_special_tokens=False))
PY
)
  check "onnxruntime-genai = ONNX Runtime backend, packed at load" "$genai" "$(gen --backend ort --no-optimized-cache)"
  gen --backend ort > /dev/null # saves the optimized model if it is not cached yet
  check "onnxruntime-genai = ONNX Runtime backend, mapped from the cache" "$genai" "$(gen --backend ort)"
  check "ONNX Runtime = tract" "$genai" "$(gen --backend tract)"

  serve 256
  cached=$(ask --raw --temperature 0 --max-tokens $tokens "$prompt"; ask --raw --temperature 0 --max-tokens $tokens "$prompt")
  intent=$(ask --intent --json "turn on the kitchen light" | tail -n1)
  stop
  serve 0
  uncached=$(ask --raw --temperature 0 --max-tokens $tokens "$prompt"; ask --raw --temperature 0 --max-tokens $tokens "$prompt")
  stop
  check "daemon: prefix cache on = off" "$uncached" "$cached"
  event=$(printf '%s' "$intent" | "$python" -c 'import json,sys; e=json.loads(sys.stdin.read()); print(e.get("event"))')
  check "daemon: constrained intent ends in an intent event ($intent)" "intent" "$event"

  estimate=$( ("$bin" doctor --config "$work/config.toml" --json 2>/dev/null || true) |
    "$python" -c 'import json,sys; print(round(json.load(sys.stdin)["memory"]["model_needs_mb"]))')
  read -r ort_packed_peak ort_packed_end <<< "$(peak --backend ort --no-optimized-cache)"
  read -r ort_peak ort_end <<< "$(peak --backend ort)"
  read -r tract_peak tract_end <<< "$(peak --backend tract)"
  echo "  memory (MiB): estimate $estimate; ONNX Runtime packed peak $ort_packed_peak / end $ort_packed_end," \
    "mapped peak $ort_peak / end $ort_end; tract peak $tract_peak / end $tract_end; weights $data"
done
exit $failed
