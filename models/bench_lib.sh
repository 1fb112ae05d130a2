# Shared by models/bench_vs_peer.sh and models/bench_backends.sh (sourced, not run): their
# options, the model (default: the random-weight 0.8B-shaped int4 model, generated on first
# use), the release build and the ONNX Runtime library.
#
# bench_setup NAME "$@" sets: python, model, lib, rounds and args (the `qwenedge bench` /
# bench_peer.py arguments), and warms the page cache with the weights so that neither side
# pays for their first read.
bench_setup() {
  local name="$1"; shift
  local threads=2 prompt=128 new=64 runs=3
  model="" rounds=3
  while [ $# -gt 0 ]; do
    case "$1" in
      --model|--threads|--prompt-tokens|--new-tokens|--runs|--rounds)
        [ $# -ge 2 ] || { echo "$name: $1 needs a value" >&2; exit 2; } ;;&
      --model) model="$2"; shift 2 ;;
      --threads) threads="$2"; shift 2 ;;
      --prompt-tokens) prompt="$2"; shift 2 ;;
      --new-tokens) new="$2"; shift 2 ;;
      --runs) runs="$2"; shift 2 ;;
      --rounds) rounds="$2"; shift 2 ;;
      *) echo "$name: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  python=$(models/venv.sh | tail -n1)
  if [ -z "$model" ]; then
    model="$("$python" models/fixtures/generate.py --preset 0.8b | tail -n1)/int4"
  fi
  cargo build --release --locked >&2
  lib=$(deploy/fetch-onnxruntime.sh | tail -n1)
  args=(--model "$model" --threads "$threads" --prompt-tokens "$prompt" --new-tokens "$new" --runs "$runs")
  cat "$model/model.onnx.data" > /dev/null
}
