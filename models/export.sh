#!/usr/bin/env bash
# Exports a Qwen3.5 Small checkpoint from Hugging Face to the ONNX model directory qwenedge
# loads, with the official onnxruntime-genai model builder (text decoder only).
#
# usage: models/export.sh [--precision int4|fp32] [--out DIR] MODEL_ID
#   MODEL_ID   e.g. Qwen/Qwen3.5-0.8B (see models/catalog.toml)
#   --precision  int4 (default; MatMulNBits, block 32) or fp32
#   --out      default: $QWENEDGE_CACHE/models/<name>-<precision>
# Needs network access to huggingface.co. Prints the model directory as the last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
precision=int4
out=""
model=""
while [ $# -gt 0 ]; do
  case "$1" in
    --precision) precision="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "export: unknown option $1" >&2; exit 2 ;;
    *) model="$1"; shift ;;
  esac
done
[ -n "$model" ] || { echo "export: give a model id, e.g. Qwen/Qwen3.5-0.8B" >&2; exit 2; }
case "$precision" in int4|fp32) ;; *) echo "export: precision must be int4 or fp32" >&2; exit 2 ;; esac
cache="${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}"
name=$(basename "$model" | tr '[:upper:]' '[:lower:]')
out="${out:-$cache/models/$name-$precision}"
if [ -f "$out/genai_config.json" ] && [ -f "$out/model.onnx.data" ]; then
  echo "$out"
  exit 0
fi
python=$("$here/venv.sh" | tail -n1)
tmp="$out.tmp"
rm -rf "$tmp"
mkdir -p "$tmp" "$cache/hf"
"$python" -m onnxruntime_genai.models.builder -m "$model" -o "$tmp" -p "$precision" -e cpu -c "$cache/hf" >&2
for f in genai_config.json model.onnx model.onnx.data tokenizer.json; do
  [ -f "$tmp/$f" ] || { echo "export: the builder did not write $f" >&2; exit 1; }
done
rm -rf "$out"
mv "$tmp" "$out"
echo "$out"
