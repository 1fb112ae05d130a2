#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library qwenedge loads at run time (no build-time download).
# It comes from the official `onnxruntime` wheel on PyPI, verified by sha256, and lands as
#   <dest>/libonnxruntime.so.<version> plus a libonnxruntime.so symlink.
#
# usage: deploy/fetch-onnxruntime.sh [--arch x86_64|aarch64] [--dest DIR]
#   --arch  target architecture (default: this machine's)
#   --dest  where to put the library (default: $QWENEDGE_CACHE/lib, or .../lib/<arch> when
#           --arch differs from this machine; QWENEDGE_CACHE defaults to ~/.cache/qwenedge)
# Prints the library path as the last line.
set -euo pipefail

VERSION=1.31.1
declare -A SHA256=(
  [x86_64]=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
  [aarch64]=da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3
)

arch=$(uname -m)
dest=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --dest) dest="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "fetch-onnxruntime: unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$arch" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) echo "fetch-onnxruntime: unsupported architecture '$arch' (x86_64 or aarch64)" >&2; exit 2 ;;
esac
cache="${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}"
if [ -z "$dest" ]; then
  if [ "$arch" = "$(uname -m)" ]; then dest="$cache/lib"; else dest="$cache/lib/$arch"; fi
fi
lib="$dest/libonnxruntime.so.$VERSION"
if [ -f "$lib" ] && [ -f "$lib.wheel-sha256" ] && [ "$(cat "$lib.wheel-sha256")" = "${SHA256[$arch]}" ]; then
  echo "$lib"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wheel=$("$(dirname "$0")/pypi-wheel.sh" fetch-onnxruntime "onnxruntime==$VERSION" "manylinux_2_28_$arch" "${SHA256[$arch]}" "$tmp" | tail -n1)
mkdir -p "$dest"
python3 - "$wheel" "$lib" "$VERSION" <<'PY'
import shutil, sys, zipfile
wheel, out, version = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(f"onnxruntime/capi/libonnxruntime.so.{version}") as src, open(out + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
mv "$lib.part" "$lib"
echo "${SHA256[$arch]}" > "$lib.wheel-sha256"
ln -sfn "libonnxruntime.so.$VERSION" "$dest/libonnxruntime.so"
echo "$lib"
