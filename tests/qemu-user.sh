#!/usr/bin/env bash
# Installs qemu-user >= 10 (qemu-aarch64, qemu-x86_64, …) when it is missing or older: Debian
# bookworm's 7.2 crashes inside ONNX Runtime's CPU detection, so on bookworm it comes from
# bookworm-backports (the source is added when needed, on the release's own mirror).
# Used by tests/aarch64-qemu.sh (an aarch64 board emulated) and deploy/test.sh (an Intel CPU
# emulated for the OpenVINO plugin, tests/e2e/plugin_eps.rs). Exits non-zero with a reason when it
# cannot.
set -euo pipefail
say() { echo "qemu-user: $*" >&2; }
fail() { echo "qemu-user: $*" >&2; exit 1; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() {
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}
qemu_major() {
  command -v qemu-aarch64 >/dev/null && command -v qemu-x86_64 >/dev/null || { echo 0; return; }
  qemu-aarch64 --version 2>/dev/null | sed -n '1s/.*version \([0-9][0-9]*\)\..*/\1/p' | grep . || echo 0
}
[ "$(qemu_major)" -ge 10 ] && exit 0
command -v apt-get >/dev/null \
  || fail "qemu-user >= 10 is needed (found: $(qemu-aarch64 --version 2>/dev/null | head -n1 || echo none)) and apt-get is not available"
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$codename" ] || fail "cannot tell the Debian release from /etc/os-release"
$sudo apt-get update -qq >&2
candidate=$(apt-cache policy qemu-user | sed -n 's/^ *Candidate: *//p')
if [ "$(echo "$candidate" | sed -n 's/^\([0-9]*:\)\{0,1\}\([0-9][0-9]*\)\..*/\2/p' | grep . || echo 0)" -ge 10 ]; then
  apt_install qemu-user
else
  backports="$codename-backports"
  if ! grep -qsE "^[^#]*\b$backports\b" /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
    # The same mirror as the release's own source (the first Debian archive URI found).
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | awk '$1 == "URIs:" && $2 ~ /\/debian\/?$/ { sub(/\/$/, "", $2); print $2; exit }' || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\/.*\/debian\/?$/) { sub(/\/$/, "", $i); print $i; exit } }' \
      /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    say "adding the $backports source ($mirror)"
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" "$backports" | $sudo tee "/etc/apt/sources.list.d/$backports.sources" >/dev/null
    $sudo apt-get update -qq >&2
  fi
  apt_install -t "$backports" qemu-user
fi
hash -r
[ "$(qemu_major)" -ge 10 ] \
  || fail "qemu-user >= 10 is needed; after installing, found: $(qemu-aarch64 --version 2>/dev/null | head -n1 || echo none)"
