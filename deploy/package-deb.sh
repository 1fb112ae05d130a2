#!/usr/bin/env bash
# Builds the Debian package qwenedge_<version>_<arch>.deb with plain dpkg-deb (no cargo-deb).
#
# usage: deploy/package-deb.sh [--arch amd64|arm64] [--binary PATH] [--onnxruntime PATH]
#                              [--from DIR] [--out DIR] [--no-strip]
#   --arch         Debian architecture (default: this machine's, from dpkg --print-architecture)
#   --binary       the qwenedge executable (default: target/release/qwenedge for this machine's
#                  architecture, target/aarch64-unknown-linux-gnu/release/qwenedge for arm64, or
#                  what deploy/build.sh --target aarch64 builds)
#   --onnxruntime  libonnxruntime.so.<version> to bundle (default: deploy/fetch-onnxruntime.sh)
#   --from         a directory made by deploy/build.sh (bin/qwenedge, lib/qwenedge/libonnxruntime.so.*)
#   --out          where to write the .deb (default: target/deb)
#   --no-strip     do not strip the binary
# The package holds /usr/bin/qwenedge, ONNX Runtime in the private directory /usr/lib/qwenedge,
# the systemd units, sysusers.d/tmpfiles.d snippets and /etc/qwenedge/config.toml (a conffile).
# It holds no model. Prints the .deb path as the last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

arch=""
binary=""
ortlib=""
from=""
out="$root/target/deb"
strip_binary=1
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --onnxruntime) ortlib="$2"; shift 2 ;;
    --from) from="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --no-strip) strip_binary=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "package-deb: unknown argument: $1" >&2; exit 2 ;;
  esac
done
die() { echo "package-deb: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || die "dpkg-deb is needed (Debian package dpkg)"

host_arch=$(dpkg --print-architecture 2>/dev/null || true)
[ -n "$arch" ] || arch="$host_arch"
case "$arch" in
  amd64|x86_64) arch=amd64; uname_arch=x86_64; elf_machine=62; triple=x86_64-unknown-linux-gnu ;;
  arm64|aarch64) arch=arm64; uname_arch=aarch64; elf_machine=183; triple=aarch64-unknown-linux-gnu ;;
  *) die "unsupported architecture '$arch' (amd64 or arm64)" ;;
esac
native=0
[ "$arch" = "$host_arch" ] && native=1

# Version: the workspace's (daemon/Cargo.toml inherits it), as a Debian version
# (a semver pre-release 1.2.0-rc.1 becomes 1.2.0~rc.1 so that it sorts before 1.2.0).
crate_version=$(sed -n '/^\[package\]/,/^\[/s/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' \
  "$root/daemon/Cargo.toml" | head -n1)
if [ -z "$crate_version" ]; then
  crate_version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' \
    "$root/Cargo.toml" | head -n1)
fi
[ -n "$crate_version" ] || die "could not read the version from Cargo.toml"
version=${crate_version/-/\~}

# Inputs.
if [ -n "$from" ]; then
  [ -d "$from" ] || die "--from $from: not a directory"
  [ -n "$binary" ] || binary="$from/bin/qwenedge"
  if [ -z "$ortlib" ]; then
    ortlib=$(find "$from/lib/qwenedge" -maxdepth 1 -name 'libonnxruntime.so.*.*.*' -type f 2>/dev/null | sort | tail -n1)
    [ -n "$ortlib" ] || die "--from $from: no lib/qwenedge/libonnxruntime.so.<version> in it"
  fi
fi
if [ -z "$binary" ]; then
  if [ "$native" = 1 ] && [ -x "$root/target/release/qwenedge" ]; then
    binary="$root/target/release/qwenedge"
  elif [ -x "$root/target/$triple/release/qwenedge" ]; then
    binary="$root/target/$triple/release/qwenedge"
  elif [ "$native" = 0 ] && [ -x "$here/build.sh" ]; then
    echo "package-deb: building for $uname_arch with deploy/build.sh" >&2
    built=$("$here/build.sh" --target "$uname_arch" --out "$root/target/dist" | tail -n1)
    binary="$built/bin/qwenedge"
    if [ -z "$ortlib" ]; then
      ortlib=$(find "$built/lib/qwenedge" -maxdepth 1 -name 'libonnxruntime.so.*.*.*' -type f | sort | tail -n1)
    fi
  elif [ "$native" = 1 ]; then
    die "no binary at target/release/qwenedge: build it with 'cargo build --release --locked' or pass --binary"
  else
    die "no $arch binary: build one (deploy/build.sh --target $uname_arch) and pass --from or --binary"
  fi
fi
[ -f "$binary" ] || die "binary $binary does not exist"
if [ -z "$ortlib" ]; then
  ortlib=$("$here/fetch-onnxruntime.sh" --arch "$uname_arch" | tail -n1)
fi
[ -e "$ortlib" ] || die "ONNX Runtime library $ortlib does not exist"
ortlib=$(readlink -f "$ortlib")
ort_name=$(basename "$ortlib")
case "$ort_name" in
  libonnxruntime.so.[0-9]*.[0-9]*.[0-9]*) ort_version=${ort_name#libonnxruntime.so.} ;;
  *) die "$ortlib: expected a file named libonnxruntime.so.<major>.<minor>.<patch>" ;;
esac

# Both files must be ELF for the package's architecture (e_machine at offset 18).
check_elf() {
  local magic machine
  magic=$(od -An -c -N 4 "$1" | tr -d ' ')
  [ "$magic" = '177ELF' ] || die "$1: not an ELF file"
  machine=$(od -An -t u2 -j 18 -N 2 "$1" | tr -d ' ')
  [ "$machine" = "$elf_machine" ] || die "$1: built for another architecture (ELF machine $machine), not $arch"
}
check_elf "$binary"
check_elf "$ortlib"
if [ "$native" = 1 ]; then
  got=$("$binary" --version 2>/dev/null | awk '{print $2}') || true
  [ "$got" = "$crate_version" ] ||
    die "$binary reports version '${got:-?}' but Cargo.toml says $crate_version (stale build? rebuild it)"
fi

# Reproducible timestamps: the last commit's time unless SOURCE_DATE_EPOCH is set.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg="$work/pkg"
umask 022
mkdir -p "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/lib/qwenedge" "$pkg/usr/lib/systemd/system" \
  "$pkg/usr/lib/sysusers.d" "$pkg/usr/lib/tmpfiles.d" "$pkg/etc/qwenedge" "$pkg/usr/share/doc/qwenedge"

install -m 0755 "$binary" "$pkg/usr/bin/qwenedge"
if [ "$strip_binary" = 1 ]; then
  stripper=""
  if [ "$uname_arch" = "$(uname -m)" ]; then stripper=$(command -v strip || true); fi
  [ -n "$stripper" ] || stripper=$(command -v "$uname_arch-linux-gnu-strip" || true)
  if [ -n "$stripper" ]; then
    "$stripper" --strip-all "$pkg/usr/bin/qwenedge"
  else
    echo "package-deb: no strip for $uname_arch found; the binary keeps its debug information" >&2
  fi
fi
# The library from the wheel is already stripped.
install -m 0644 "$ortlib" "$pkg/usr/lib/qwenedge/$ort_name"
ln -s "$ort_name" "$pkg/usr/lib/qwenedge/libonnxruntime.so"

install -m 0644 "$root/systemd/qwenedge.service" "$pkg/usr/lib/systemd/system/qwenedge.service"
install -m 0644 "$root/systemd/qwenedge.socket" "$pkg/usr/lib/systemd/system/qwenedge.socket"
install -m 0644 "$root/systemd/qwenedge.sysusers" "$pkg/usr/lib/sysusers.d/qwenedge.conf"
install -m 0644 "$root/systemd/qwenedge.tmpfiles" "$pkg/usr/lib/tmpfiles.d/qwenedge.conf"

# The configuration, with model.path pointing at the packaged model location.
model_path=/var/lib/qwenedge/models/qwen3.5-0.8b-int4
sed "/^\[model\]/,/^\[/s|^path[[:space:]]*=.*|path = \"$model_path\"|" \
  "$root/deploy/config.example.toml" > "$pkg/etc/qwenedge/config.toml"
grep -qx "path = \"$model_path\"" "$pkg/etc/qwenedge/config.toml" ||
  die "deploy/config.example.toml has no [model] path line to point at $model_path"
chmod 0644 "$pkg/etc/qwenedge/config.toml"

install -m 0644 "$root/README.md" "$pkg/usr/share/doc/qwenedge/README.md"
# Home Assistant's sentence templates (CC BY 4.0) and their number words, checked against the
# checksums they are pinned with: intents are matched offline, from the package alone.
sentences="$root/daemon/sentences/data"
(cd "$sentences" && sha256sum --check --quiet SHA256SUMS) || die "daemon/sentences/data does not match its SHA256SUMS"
for f in LICENSE.md README.md SHA256SUMS $(cd "$sentences" && find intents numbers -type f | sort); do
  install -D -m 0644 "$sentences/$f" "$pkg/usr/share/qwenedge/sentences/$f"
done
year=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
repo_url=$(sed -n 's/^repository[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$root/Cargo.toml" | head -n1)
{
  cat <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: qwenedge
Source: ${repo_url:-https://github.com/qwenedge/qwenedge}

Files: *
Copyright: $year The qwenedge contributors
License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License"); you may not
 use this software except in compliance with the License. Unless required by
 applicable law or agreed to in writing, software distributed under the
 License is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS
 OF ANY KIND, either express or implied.
 .
 On Debian systems, the full text of the Apache License, Version 2.0 can be
 found in /usr/share/common-licenses/Apache-2.0.
Comment: /usr/bin/qwenedge statically includes Rust crates published on
 crates.io under their own permissive licences (MIT, Apache-2.0, BSD,
 Unicode-3.0, Zlib); Cargo.lock in the source names each one and its version.

Files: usr/lib/qwenedge/libonnxruntime.so*
Copyright: (c) Microsoft Corporation
License: MIT
Comment: ONNX Runtime $ort_version, the CPU build from the official onnxruntime
 wheel on PyPI, bundled unmodified. It includes third-party components whose
 notices are in ThirdPartyNotices.txt of that release:
 https://github.com/microsoft/onnxruntime/blob/v$ort_version/ThirdPartyNotices.txt

Files: usr/share/qwenedge/sentences/*
Copyright: Open Home Foundation and the contributors to Home Assistant's intents
License: CC-BY-4.0
Comment: The language files of the PyPI package home-assistant-intents 2026.8.28,
 unmodified, and number words derived from them with unicode-rbnf 2.4.1 (CLDR's
 spell-out rules); see /usr/share/qwenedge/sentences/README.md. The licence's
 full text is /usr/share/qwenedge/sentences/LICENSE.md
 (https://creativecommons.org/licenses/by/4.0/legalcode).

License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the "Software"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in all
 copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
 SOFTWARE.
EOF
} > "$pkg/usr/share/doc/qwenedge/copyright"
# A minimal changelog, as Debian policy asks of every package.
{
  echo "qwenedge ($version) unstable; urgency=medium"
  echo
  echo "  * qwenedge $crate_version with ONNX Runtime $ort_version."
  echo
  echo " -- qwenedge maintainers <maintainers@qwenedge.invalid>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$pkg/usr/share/doc/qwenedge/changelog.gz"
chmod 0644 "$pkg/usr/share/doc/qwenedge/changelog.gz"
# ONNX Runtime's own notices, when they were kept next to the library.
ortdir=$(dirname "$ortlib")
for f in ThirdPartyNotices.txt LICENSE; do
  if [ -f "$ortdir/$f" ]; then
    install -D -m 0644 "$ortdir/$f" "$pkg/usr/share/doc/qwenedge/onnxruntime/$f"
  fi
done

# Depends: what the binary and the library link against. dpkg-shlibdeps knows Debian's exact
# minimum versions when it can see this architecture's libraries (a native build); otherwise
# the minimums come from the ELF symbol versions (GLIBC_x.y -> libc6 x.y; the newest
# GLIBCXX/CXXABI version -> the GCC release whose libstdc++ introduced it).
shlibdeps_native() {
  command -v dpkg-shlibdeps >/dev/null || return 1
  mkdir -p "$work/src/debian"
  printf 'Source: qwenedge\n\nPackage: qwenedge\nArchitecture: any\n' > "$work/src/debian/control"
  (cd "$work/src" && dpkg-shlibdeps --warnings=0 -O -l"$pkg/usr/lib/qwenedge" \
      "$pkg/usr/bin/qwenedge" "$pkg/usr/lib/qwenedge/$ort_name" 2>"$work/shlibdeps.log") |
    sed -n 's/^shlibs:Depends=//p'
}
shlibdeps_symbols() {
  command -v objdump >/dev/null || die "objdump is needed to work out Depends (Debian package binutils)"
  local syms needed glibc gccs cxx gcc deps
  syms=$(objdump -T "$pkg/usr/bin/qwenedge" "$pkg/usr/lib/qwenedge/$ort_name" 2>/dev/null)
  needed=$(objdump -p "$pkg/usr/bin/qwenedge" "$pkg/usr/lib/qwenedge/$ort_name" | awk '$1 == "NEEDED" {print $2}')
  glibc=$(grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' <<<"$syms" | sed 's/GLIBC_//' | sort -Vu | tail -n1)
  deps="libc6 (>= ${glibc:-2.17})"
  if grep -qx 'libgcc_s.so.1' <<<"$needed"; then
    gccs=$(grep -oE 'GCC_[0-9]+(\.[0-9]+)+' <<<"$syms" | sed 's/GCC_//; s/\.0$//' | sort -Vu | tail -n1)
    deps="$deps, libgcc-s1${gccs:+ (>= $gccs)}"
  fi
  if grep -qx 'libstdc++.so.6' <<<"$needed"; then
    # GLIBCXX_3.4.N -> the first GCC release whose libstdc++ has it.
    cxx=$(grep -oE 'GLIBCXX_3\.4\.[0-9]+' <<<"$syms" | sed 's/GLIBCXX_3\.4\.//' | sort -n | tail -n1)
    case "${cxx:-0}" in
      [0-9]|1[0-9]) gcc=4.8 ;; 2[0-1]) gcc=5 ;; 22) gcc=6 ;; 23) gcc=7 ;; 2[4-5]) gcc=8 ;;
      2[6-8]) gcc=9 ;; 29) gcc=11 ;; 30) gcc=12 ;; 31) gcc=13 ;; 32) gcc=14 ;; 33) gcc=15 ;;
      *) die "libstdc++ symbol version GLIBCXX_3.4.$cxx is newer than this script knows" ;;
    esac
    # Debian's libstdc++6 symbols file dates the CXXABI_1.3.11 symbols (aligned new/delete)
    # to 10.2; following it keeps this Depends equal to what dpkg-shlibdeps says natively.
    if grep -q 'CXXABI_1\.3\.11' <<<"$syms" && [ "$(printf '%s\n' "$gcc" 10.2 | sort -V | tail -n1)" = 10.2 ]; then
      gcc=10.2
    fi
    deps="$deps, libstdc++6 (>= $gcc)"
  fi
  echo "$deps"
}
depends=""
if [ "$native" = 1 ]; then
  depends=$(shlibdeps_native || true)
  [ -n "$depends" ] || echo "package-deb: dpkg-shlibdeps unavailable or failed; Depends from symbol versions" >&2
fi
[ -n "$depends" ] || depends=$(shlibdeps_symbols)

installed_size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<EOF
Package: qwenedge
Version: $version
Architecture: $arch
Maintainer: qwenedge maintainers <maintainers@qwenedge.invalid>
Installed-Size: $installed_size
Depends: $depends
Recommends: systemd
Suggests: socat
Section: misc
Priority: optional
Homepage: ${repo_url:-https://github.com/qwenedge/qwenedge}
Description: on-device LLM inference daemon for Qwen3.5 Small ONNX models
 qwenedge runs Qwen3.5 Small models (0.8B to 9B) exported to ONNX through
 ONNX Runtime, entirely on the device. The daemon serves newline-delimited
 JSON on the Unix socket /run/qwenedge/qwenedge.sock, with priorities,
 cancellation, deadlines and systemd socket activation; the qwenedge command
 also answers prompts directly (generate), talks to the daemon (ask),
 measures speed (bench) and checks the installation (doctor).
 .
 A CPU build of ONNX Runtime $ort_version is bundled in /usr/lib/qwenedge. The
 package holds no model: put one under /var/lib/qwenedge/models (see
 /usr/share/doc/qwenedge/README.md) and start qwenedge.socket.
EOF
echo /etc/qwenedge/config.toml > "$pkg/DEBIAN/conffiles"

# The configured model directory is read from config.toml by the postinst; it is
# $DPKG_ROOT-relative so that installing into another root (dpkg --root with
# --force-script-chrootless, or a chroot) touches nothing outside it.
cat > "$pkg/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# postinst for qwenedge: system user, directories, systemd units.
set -e

say() { echo "qwenedge: $*" >&2; }

# systemd is running here (not a chroot, a container without systemd, or another root).
systemd_running() {
  [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

user_exists() {
  if [ -n "$DPKG_ROOT" ]; then
    grep -q '^qwenedge:' "$DPKG_ROOT/etc/passwd" 2>/dev/null
  else
    getent passwd qwenedge >/dev/null 2>&1
  fi
}

model_path() {
  cfg="$DPKG_ROOT/etc/qwenedge/config.toml"
  [ -f "$cfg" ] || return 0
  sed -n "/^\[model\]/,/^\[/s/^[[:space:]]*path[[:space:]]*=[[:space:]]*[\"']\([^\"']*\)[\"'].*/\1/p" "$cfg" | head -n 1
}

if [ "$1" = configure ]; then
  # The system user and group qwenedge (sysusers.d/qwenedge.conf).
  if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers ${DPKG_ROOT:+--root="$DPKG_ROOT"} qwenedge.conf
  elif ! user_exists; then
    useradd ${DPKG_ROOT:+--root "$DPKG_ROOT"} --system --user-group --home-dir /var/lib/qwenedge \
      --no-create-home --shell /usr/sbin/nologin --comment "qwenedge inference daemon" qwenedge
  fi
  # /etc/qwenedge, /var/lib/qwenedge and /var/lib/qwenedge/models (tmpfiles.d/qwenedge.conf).
  if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles ${DPKG_ROOT:+--root="$DPKG_ROOT"} --create qwenedge.conf
  else
    mkdir -p "$DPKG_ROOT/etc/qwenedge" "$DPKG_ROOT/var/lib/qwenedge/models"
    if [ -n "$DPKG_ROOT" ]; then
      owner=$(sed -n 's/^qwenedge:[^:]*:\([0-9]*\):\([0-9]*\):.*/\1:\2/p' "$DPKG_ROOT/etc/passwd")
    else
      owner=qwenedge:qwenedge
    fi
    chown "$owner" "$DPKG_ROOT/var/lib/qwenedge" "$DPKG_ROOT/var/lib/qwenedge/models"
    chmod 0755 "$DPKG_ROOT/var/lib/qwenedge" "$DPKG_ROOT/var/lib/qwenedge/models"
  fi

  if systemd_running; then
    systemctl daemon-reload || true
  fi
  model=$(model_path)
  if [ -n "$model" ] && [ -f "$DPKG_ROOT$model/genai_config.json" ]; then
    # Enable on first installation only; on upgrades the administrator's choice stands. Without
    # a model nothing is enabled, so that a reboot does not start a daemon that cannot serve.
    if [ -z "$2" ] && command -v systemctl >/dev/null 2>&1; then
      systemctl ${DPKG_ROOT:+--root="$DPKG_ROOT"} --quiet enable qwenedge.socket qwenedge.service || \
        say "could not enable qwenedge.socket and qwenedge.service; enable them with systemctl"
    fi
    if systemd_running; then
      # A running daemon picks up the new binary; otherwise start what is enabled. --no-block:
      # loading the model takes a while, and the package manager need not wait for it.
      [ -z "$2" ] || systemctl --no-block try-restart qwenedge.service || true
      started=""
      for unit in qwenedge.socket qwenedge.service; do
        if systemctl --quiet is-enabled "$unit" 2>/dev/null; then
          if systemctl --no-block start "$unit"; then
            started="$started $unit"
          else
            say "could not start $unit (see: journalctl -u $unit)"
          fi
        fi
      done
      if [ -n "$started" ]; then
        say "started$started; the model $model is loading (systemctl status qwenedge, then: qwenedge ask \"Hello\")"
      fi
    else
      say "systemd is not running here, so nothing was started; run the daemon with"
      say "    install -d -o qwenedge -g qwenedge /run/qwenedge"
      say "    runuser -u qwenedge -- qwenedge serve --config /etc/qwenedge/config.toml"
    fi
  else
    say "no model installed at ${model:-(none: model.path is not set)}"
    say "(model.path in /etc/qwenedge/config.toml), so the daemon was neither enabled nor started."
    say "To fetch a model and start it, from a qwenedge source checkout (needs huggingface.co):"
    say "    sudo deploy/install.sh --model Qwen/Qwen3.5-0.8B"
    say "or copy a model directory exported elsewhere with models/export.sh to"
    say "${model:-/var/lib/qwenedge/models/<name>} (and set model.path if it differs), then run"
    say "    sudo systemctl enable --now qwenedge.socket qwenedge.service"
    say "Check the installation with: qwenedge doctor"
  fi
fi
exit 0
EOF

cat > "$pkg/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# prerm for qwenedge: stop the daemon when the package is removed (not on upgrades;
# the postinst restarts a running daemon then).
set -e
case "$1" in
  remove|deconfigure)
    if [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
      systemctl stop qwenedge.socket qwenedge.service || true
    fi
    ;;
esac
exit 0
EOF

cat > "$pkg/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# postrm for qwenedge. remove: the units are gone (their enable links stay, so that a
# reinstallation keeps the administrator's choice). purge: also the enable links, the
# models and state in /var/lib/qwenedge and /run/qwenedge. dpkg itself removes the conffile
# /etc/qwenedge/config.toml on purge. The system user qwenedge is kept, as is usual for
# Debian packages (files elsewhere may still belong to it): remove it with userdel qwenedge.
set -e
case "$1" in
  purge)
    rm -f "$DPKG_ROOT/etc/systemd/system/sockets.target.wants/qwenedge.socket" \
          "$DPKG_ROOT/etc/systemd/system/multi-user.target.wants/qwenedge.service"
    rm -rf "$DPKG_ROOT/var/lib/qwenedge" "$DPKG_ROOT/run/qwenedge"
    rmdir "$DPKG_ROOT/etc/qwenedge" 2>/dev/null || true
    ;;
esac
case "$1" in
  remove|purge)
    if [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
      systemctl daemon-reload || true
      systemctl reset-failed qwenedge.service qwenedge.socket 2>/dev/null || true
    fi
    ;;
esac
exit 0
EOF
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"
for s in postinst prerm postrm; do
  sh -n "$pkg/DEBIAN/$s" || die "maintainer script $s has a syntax error"
done

(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f ! -path ./etc/qwenedge/config.toml -print |
  sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) > "$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/md5sums"
find "$pkg" -type d -exec chmod 0755 {} +

mkdir -p "$out"
deb="$(cd "$out" && pwd)/qwenedge_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
echo "$deb"
