#!/usr/bin/env bash
# Fetches an execution-provider plugin library for ONNX Runtime from its vendor's wheel on
# PyPI, verified by sha256, for a user who wants to try it (`[[model.ep_library]]`):
#   qnn       onnxruntime-qnn (Qualcomm QNN: the HTP/NPU, GPU; on x86-64 the HTP is a simulator)
#   openvino  onnxruntime-ep-openvino (Intel OpenVINO: CPU, iGPU, NPU; Intel hardware only)
# The wheel's libraries land under <dest>/<ep>-<version>/ with the wheel's own layout (the
# plugin finds its backends and bundled C++ runtime next to it).
#
# usage: deploy/fetch-ep-plugin.sh qnn|openvino [--dest DIR]
#   --dest  where to put it (default: $QWENEDGE_CACHE/ep; QWENEDGE_CACHE defaults to
#           ~/.cache/qwenedge)
# Prints the plugin library's path as the last line (the `path` of [[model.ep_library]]).
# PyPI has both for x86-64 Linux only: on a Snapdragon or other aarch64 board, the QNN plugin
# and its libQnnHtp.so come with Qualcomm's AI Runtime SDK (QAIRT); see the README's boards
# section.
set -euo pipefail

ep="${1:-}"
shift || true
dest=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) dest="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "fetch-ep-plugin: unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$ep" in
  qnn)
    package=onnxruntime-qnn version=2.7.0 dir=onnxruntime_qnn
    platform=manylinux_2_35_x86_64
    sha256=c56c01562b8534fe8980cfea4601408d950c065f8251fb862ce82101c52c9849
    plugin=onnxruntime_qnn/libonnxruntime_providers_qnn.so ;;
  openvino)
    package=onnxruntime-ep-openvino version=1.8.1 dir=onnxruntime_ep_openvino
    platform=manylinux_2_28_x86_64
    sha256=3832643158c8c187fcab6db661cde2a8c06a2b3559d95d0f2411ac0e51c5e924
    plugin=onnxruntime_ep_openvino/libonnxruntime_providers_openvino_plugin.so ;;
  -h|--help|"") sed -n '2,15p' "$0"; exit 2 ;;
  *) echo "fetch-ep-plugin: unknown plugin '$ep' (qnn or openvino)" >&2; exit 2 ;;
esac
if [ "$(uname -m)" != x86_64 ]; then
  echo "fetch-ep-plugin: PyPI's $package is built for x86-64 Linux only; this machine is $(uname -m)" >&2
  exit 1
fi
cache="${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}"
dest="${dest:-$cache/ep}/$ep-$version"
if [ -f "$dest/$plugin" ] && [ "$(cat "$dest/wheel-sha256" 2>/dev/null)" = "$sha256" ]; then
  echo "$dest/$plugin"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wheel=$("$(dirname "$0")/pypi-wheel.sh" fetch-ep-plugin "$package==$version" "$platform" "$sha256" "$tmp" | tail -n1)
rm -rf "$dest.part"
mkdir -p "$dest.part"
python3 - "$wheel" "$dest.part" "$dir" <<'PY'
import sys, zipfile
wheel, out, top = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith((top + "/", top + ".libs/")) and not name.endswith(".py"):
            z.extract(name, out)
PY
echo "$sha256" > "$dest.part/wheel-sha256"
rm -rf "$dest"
mv "$dest.part" "$dest"
echo "$dest/$plugin"
