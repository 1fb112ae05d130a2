#!/usr/bin/env bash
# Builds a self-contained qwenedge bundle for x86_64 or aarch64 (64-bit ARM boards such as the
# Raspberry Pi 5 or a Jetson Orin), cross-compiling from an x86_64 Debian machine:
#
#   <out>/qwenedge-<version>-<arch>/
#     bin/qwenedge
#     lib/qwenedge/libonnxruntime.so.1.31.1   (official CPU build, from the PyPI wheel, sha256-checked)
#     lib/qwenedge/libonnxruntime.so -> libonnxruntime.so.1.31.1
#
# The binary looks for <exe_dir>/../lib/qwenedge/libonnxruntime.so, so the directory runs as is
# wherever it is copied (e.g. `rsync -a` it to /opt/qwenedge on the board); a vendor ONNX Runtime
# with an NPU/GPU provider replaces the library file or is named in the configuration.
#
# usage: deploy/build.sh [--target x86_64|aarch64] [--out DIR]
#   --target  architecture to build for (default: this machine's)
#   --out     where to put the bundle (default: target/dist in the repository)
# Prints the bundle directory as the last line of stdout. A second run is quick: cargo and the
# library download are cached (the library in $QWENEDGE_CACHE/lib, default ~/.cache/qwenedge).
# A native build (no --target, or this machine's) uses target/release, shared with
# `cargo test --release`; a cross build uses target/aarch64-unknown-linux-gnu/release.
# The board needs glibc >= 2.34 for a binary built on Debian bookworm (Raspberry Pi OS bookworm,
# Ubuntu 22.04 / JetPack 6 and newer); ONNX Runtime's own library needs glibc >= 2.28.
#
# What a cross build needs is installed on Debian when missing: gcc-aarch64-linux-gnu and
# libc6-dev-arm64-cross (apt), and the Rust target aarch64-unknown-linux-gnu (rustup). The
# linker is set in .cargo/config.toml, so the plain-cargo equivalent of the build step is
#   cargo build --release --locked --target aarch64-unknown-linux-gnu
# Without those packages but with Docker or Podman, cross-rs builds in a container instead, and
# against an older glibc (for older board systems such as JetPack 5 / Ubuntu 20.04):
#   cargo install cross --git https://github.com/cross-rs/cross
#   CROSS_CONFIG=cross.toml cross build --release --locked --target aarch64-unknown-linux-gnu
# (the binary lands in target/aarch64-unknown-linux-gnu/release/qwenedge; fetch the library with
# deploy/fetch-onnxruntime.sh --arch aarch64 and lay them out as above).
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(uname -m)
arch=$host
out=target/dist
while [ $# -gt 0 ]; do
  case "$1" in
    --target) [ $# -ge 2 ] || { echo "build: --target needs a value" >&2; exit 2; }; arch="$2"; shift 2 ;;
    --out) [ $# -ge 2 ] || { echo "build: --out needs a value" >&2; exit 2; }; out="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "build: unknown argument: $1 (usage: deploy/build.sh [--target x86_64|aarch64] [--out DIR])" >&2; exit 2 ;;
  esac
done
case "$arch" in
  x86_64|amd64|x86_64-unknown-linux-gnu) arch=x86_64 ;;
  aarch64|arm64|aarch64-unknown-linux-gnu) arch=aarch64 ;;
  *) echo "build: unsupported target '$arch' (x86_64 or aarch64)" >&2; exit 2 ;;
esac
triple="$arch-unknown-linux-gnu"

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "build: missing $*; install them (Debian/Ubuntu package names) or use cross-rs (see the header of $0)" >&2
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "build: installing $*" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}

command -v cargo >/dev/null || { echo "build: cargo not found; install Rust >= 1.91 (https://rustup.rs)" >&2; exit 1; }

if [ "$arch" = "$host" ]; then
  # A native build: no --target, so it shares target/release with `cargo test --release`
  # (deploy/test.sh) instead of compiling everything a second time.
  cargo_target=()
  bin_dir="${CARGO_TARGET_DIR:-target}/release"
elif [ "$host" = x86_64 ] && [ "$arch" = aarch64 ]; then
  need=()
  command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
  [ -e /usr/aarch64-linux-gnu/lib/crt1.o ] || need+=(libc6-dev-arm64-cross)
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
  if command -v rustup >/dev/null; then
    rustup target list --installed | grep -qx "$triple" || rustup target add "$triple" >&2
  elif ! rustc --print target-libdir --target "$triple" >/dev/null 2>&1; then
    echo "build: the Rust standard library for $triple is missing and rustup is not available" >&2
    exit 1
  fi
  cargo_target=(--target "$triple")
  bin_dir="${CARGO_TARGET_DIR:-target}/$triple/release"
else
  echo "build: cannot build for $arch on a $host machine (cross builds go from x86_64 to aarch64)" >&2
  exit 2
fi

echo "build: cargo build --release --locked ${cargo_target[*]}" >&2
cargo build --release --locked -p qwenedge --bin qwenedge "${cargo_target[@]}" >&2
bin="$bin_dir/qwenedge"
[ -x "$bin" ] || { echo "build: cargo finished but $bin is missing" >&2; exit 1; }

lib=$(deploy/fetch-onnxruntime.sh --arch "$arch" | tail -n1)
[ -f "$lib" ] || { echo "build: deploy/fetch-onnxruntime.sh did not produce a library (got '$lib')" >&2; exit 1; }

pkgid=$(cargo pkgid --locked -p qwenedge)
version=${pkgid##*[#@]}
mkdir -p "$out"
dir="$(cd "$out" && pwd)/qwenedge-$version-$arch"

# Assemble next to the destination and swap it in, so the bundle is never half-written and
# nothing stale from an earlier build survives.
stage="$dir.tmp.$$"
trap 'rm -rf "$stage"' EXIT
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib/qwenedge"
cp "$bin" "$stage/bin/qwenedge"
chmod 0755 "$stage/bin/qwenedge"
libname=$(basename "$lib")
cp "$lib" "$stage/lib/qwenedge/$libname"
chmod 0644 "$stage/lib/qwenedge/$libname"
ln -s "$libname" "$stage/lib/qwenedge/libonnxruntime.so"
rm -rf "$dir"
mv "$stage" "$dir"
echo "build: $arch bundle: $(du -sh "$dir" | cut -f1) ($triple, ONNX Runtime $libname)" >&2
echo "$dir"
