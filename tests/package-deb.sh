#!/usr/bin/env bash
# Package test: builds the Debian package for this machine's architecture with
# deploy/package-deb.sh, inspects it, installs it into a scratch root and checks the
# installation there, including `qwenedge doctor` run from the installed paths, then upgrades,
# removes and purges it.
#
# usage: tests/package-deb.sh   (as root; builds target/release/qwenedge first if it is missing)
#
# The installation goes into a scratch root with
#   dpkg --root=ROOT --force-script-chrootless --force-depends
# so that the machine running the test is left as it was: dpkg unpacks into ROOT and runs the
# package's maintainer scripts on this machine with DPKG_ROOT=ROOT, and the scripts confine
# themselves to it (systemd-sysusers/systemd-tmpfiles/systemctl --root=ROOT). ROOT has no
# libc6 in its dpkg database, hence --force-depends; the installed binary still runs, against
# this machine's libraries. systemd never runs in ROOT, so nothing may be started there.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

say() { echo "package-deb test: $*" >&2; }
die() { echo "package-deb test: FAIL: $*" >&2; exit 1; }
failures=()
check() {  # check DESCRIPTION COMMAND...: records a failure instead of stopping
  local what="$1"; shift
  if "$@"; then checks=$((checks + 1)); else failures+=("$what"); say "FAIL: $what"; fi
}
checks=0

[ "$(id -u)" -eq 0 ] || die "run as root: dpkg --root installs root-owned files and creates the qwenedge user inside the scratch root"
for tool in dpkg dpkg-deb python3 tar; do
  command -v "$tool" >/dev/null || die "$tool is needed"
done
arch=$(dpkg --print-architecture)
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "no version in Cargo.toml [workspace.package]"
debversion=${version/-/\~}

if [ ! -x target/release/qwenedge ]; then
  say "building target/release/qwenedge"
  cargo build --release --locked >&2
fi
ortlib=$(deploy/fetch-onnxruntime.sh | tail -n1)
ortname=$(basename "$ortlib")
ortversion=${ortname#libonnxruntime.so.}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- build -------------------------------------------------------------------------------
t0=$(date +%s)
if ! deploy/package-deb.sh --arch "$arch" --binary target/release/qwenedge --onnxruntime "$ortlib" \
    --out "$tmp/out" >"$tmp/build.out" 2>"$tmp/build.err"; then
  cat "$tmp/build.err" >&2
  die "deploy/package-deb.sh failed"
fi
deb=$(tail -n1 "$tmp/build.out")
[ "$deb" = "$tmp/out/qwenedge_${debversion}_${arch}.deb" ] || die "package-deb.sh printed '$deb', expected $tmp/out/qwenedge_${debversion}_${arch}.deb"
[ -f "$deb" ] || die "$deb was not written"
say "built $(basename "$deb") ($(du -h "$deb" | cut -f1)) in $(( $(date +%s) - t0 ))s"

# --- control fields ----------------------------------------------------------------------
field() { dpkg-deb --field "$deb" "$1"; }
check "Package is qwenedge" test "$(field Package)" = qwenedge
check "Version is $debversion" test "$(field Version)" = "$debversion"
check "Architecture is $arch" test "$(field Architecture)" = "$arch"
check "Maintainer is set" grep -qE '^.+ <[^>]+@[^>]+>$' <<<"$(field Maintainer)"
check "Section is set" test -n "$(field Section)"
check "Priority is optional" test "$(field Priority)" = optional
check "Recommends systemd" grep -qw systemd <<<"$(field Recommends)"
check "Installed-Size is a number" grep -qE '^[0-9]+$' <<<"$(field Installed-Size)"
check "Description has a synopsis and a long text" test "$(field Description | wc -l)" -ge 3
depends=$(field Depends)
check "Depends is libc6, libgcc-s1, libstdc++6 (got: $depends)" \
  grep -qE '^libc6 \(>= [0-9.]+\), libgcc-s1( \(>= [0-9.]+\))?, libstdc\+\+6 \(>= [0-9.]+\)$' <<<"$depends"
if command -v objdump >/dev/null; then
  # libc6's minimum must cover the newest glibc symbol version the binary or library uses.
  dpkg-deb -x "$deb" "$tmp/x"
  need=$(objdump -T "$tmp/x/usr/bin/qwenedge" "$tmp/x/usr/lib/qwenedge/$ortname" |
    grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sed 's/GLIBC_//' | sort -Vu | tail -n1)
  libc=$(sed -n 's/^libc6 (>= \([0-9.]*\)).*/\1/p' <<<"$depends")
  check "libc6 (>= $libc) covers GLIBC_$need" dpkg --compare-versions "$libc" ge "$need"
  rm -rf "$tmp/x"
fi

# --- contents: every path with its mode and owner ----------------------------------------
dpkg-deb --contents "$deb" > "$tmp/contents"
expected=(
  "-rwxr-xr-x ./usr/bin/qwenedge"
  "-rw-r--r-- ./usr/lib/qwenedge/$ortname"
  "lrwxrwxrwx ./usr/lib/qwenedge/libonnxruntime.so -> $ortname"
  "-rw-r--r-- ./usr/lib/systemd/system/qwenedge.service"
  "-rw-r--r-- ./usr/lib/systemd/system/qwenedge.socket"
  "-rw-r--r-- ./usr/lib/sysusers.d/qwenedge.conf"
  "-rw-r--r-- ./usr/lib/tmpfiles.d/qwenedge.conf"
  "-rw-r--r-- ./etc/qwenedge/config.toml"
  "-rw-r--r-- ./usr/share/doc/qwenedge/README.md"
  "-rw-r--r-- ./usr/share/doc/qwenedge/copyright"
  "-rw-r--r-- ./usr/share/doc/qwenedge/changelog.gz"
)
# Home Assistant's sentence templates and their number words, every file of the data.
while read -r f; do
  expected+=("-rw-r--r-- ./usr/share/qwenedge/sentences/$f")
done < <(cd daemon/sentences/data && { echo LICENSE.md; echo README.md; echo SHA256SUMS; find intents numbers -type f | sort; })
# "MODE OWNER PATH[ -> TARGET]" for every entry
awk '{ line = $1 " " $2; for (i = 6; i <= NF; i++) line = line " " $i; print line }' "$tmp/contents" > "$tmp/entries"
for e in "${expected[@]}"; do
  mode=${e%% *}; rest=${e#* }
  check "contents list '$rest' as $mode root/root" grep -qxF -e "$mode root/root $rest" "$tmp/entries"
done
check "every entry is owned by root/root" test -z "$(awk '$2 != "root/root"' "$tmp/entries")"
check "every directory is 0755" test -z "$(awk '$1 ~ /^d/ && $1 != "drwxr-xr-x"' "$tmp/entries")"
unexpected=$(awk '$1 !~ /^d/ {print $3}' "$tmp/entries" | while read -r p; do
  found=0
  for e in "${expected[@]}"; do [ "$(cut -d' ' -f2 <<<"$e")" = "$p" ] && found=1; done
  case "$p" in ./usr/share/doc/qwenedge/onnxruntime/*) found=1 ;; esac
  [ "$found" = 1 ] || echo "$p"
done)
check "no unexpected files (found: ${unexpected//$'\n'/ })" test -z "$unexpected"

# --- control area: conffiles and maintainer scripts ----------------------------------------
dpkg-deb --control "$deb" "$tmp/control"
check "conffiles is exactly /etc/qwenedge/config.toml" test "$(cat "$tmp/control/conffiles")" = /etc/qwenedge/config.toml
check "md5sums covers the binary" grep -q ' usr/bin/qwenedge$' "$tmp/control/md5sums"
for s in postinst prerm postrm; do
  f="$tmp/control/$s"
  check "$s exists and is executable" test -x "$f"
  check "$s is a POSIX sh script" test "$(head -n1 "$f")" = '#!/bin/sh'
  check "$s runs with set -e" grep -qx 'set -e' "$f"
  check "$s parses" sh -n "$f"
  if command -v shellcheck >/dev/null; then check "$s passes shellcheck" shellcheck -s sh "$f"; fi
done
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" ./etc/qwenedge/config.toml ./usr/lib/systemd/system
check "config.toml points at /var/lib/qwenedge/models/qwen3.5-0.8b-int4" \
  grep -qx 'path = "/var/lib/qwenedge/models/qwen3.5-0.8b-int4"' "$tmp/etc/qwenedge/config.toml"
check "the packaged service unit is systemd/qwenedge.service" cmp -s systemd/qwenedge.service "$tmp/usr/lib/systemd/system/qwenedge.service"
check "the packaged socket unit is systemd/qwenedge.socket" cmp -s systemd/qwenedge.socket "$tmp/usr/lib/systemd/system/qwenedge.socket"

# --- install into a scratch root -----------------------------------------------------------
root="$tmp/root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
: > "$root/var/lib/dpkg/status"
dpkg_root() {
  dpkg --root="$root" --log="$tmp/dpkg.log" --force-script-chrootless --force-depends "$@"
}
host_user_before=$(getent passwd qwenedge || true)
host_bin_before=$(ls -l /usr/bin/qwenedge 2>/dev/null || true)

t0=$(date +%s)
dpkg_root --install "$deb" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log" >&2; die "dpkg --install into the scratch root failed"; }
say "installed into a scratch root in $(( $(date +%s) - t0 ))s"
check "dpkg reports qwenedge installed" grep -qx 'Status: install ok installed' <<<"$(dpkg --root="$root" -s qwenedge)"
check "postinst printed the no-model guidance" \
  grep -q 'qwenedge: no model installed at /var/lib/qwenedge/models/qwen3.5-0.8b-int4' "$tmp/install.log"
check "postinst explained how to start it" grep -q 'systemctl enable --now qwenedge.socket qwenedge.service' "$tmp/install.log"
check "postinst started nothing" test -z "$(grep -E 'qwenedge: started' "$tmp/install.log")"
mode_of() { stat -c '%A %u:%g' "$1"; }
check "/usr/bin/qwenedge installed 0755 root" test "$(mode_of "$root/usr/bin/qwenedge")" = "-rwxr-xr-x 0:0"
check "libonnxruntime.so points at $ortname" test "$(readlink "$root/usr/lib/qwenedge/libonnxruntime.so")" = "$ortname"
check "config.toml installed 0644 root" test "$(mode_of "$root/etc/qwenedge/config.toml")" = "-rw-r--r-- 0:0"
check "user qwenedge created (sysusers)" \
  grep -qE '^qwenedge:x:[0-9]+:[0-9]+:[^:]*:/var/lib/qwenedge:/usr/sbin/nologin$' "$root/etc/passwd"
check "group qwenedge created" grep -q '^qwenedge:' "$root/etc/group"
uid=$(awk -F: '$1 == "qwenedge" {print $3}' "$root/etc/passwd" 2>/dev/null || true)
check "/var/lib/qwenedge/models owned by qwenedge (tmpfiles)" \
  test "$(stat -c '%u %a' "$root/var/lib/qwenedge/models" 2>/dev/null)" = "${uid:-?} 755"
check "without a model, qwenedge.socket is not enabled" test ! -e "$root/etc/systemd/system/sockets.target.wants/qwenedge.socket"
check "without a model, qwenedge.service is not enabled" test ! -e "$root/etc/systemd/system/multi-user.target.wants/qwenedge.service"
check "this machine's users were not touched" test "$(getent passwd qwenedge || true)" = "$host_user_before"
check "this machine's /usr/bin was not touched" test "$(ls -l /usr/bin/qwenedge 2>/dev/null || true)" = "$host_bin_before"

# --- run the installed binary --------------------------------------------------------------
# A clean environment: no ORT_DYLIB_PATH or QWENEDGE__* from the caller, and a HOME without the
# library cache, so that the library can only come from the installed paths.
mkdir -p "$tmp/home"
installed() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$tmp/home" "$root/usr/bin/qwenedge" "$@"; }
check "installed qwenedge --version is $version" test "$(installed --version 2>&1)" = "qwenedge $version"
# The sentence templates come with the package: a command is matched offline, in two languages.
local_match() {  # local_match LANGUAGE TEXT INTENT
  local out
  out=$(printf '{"text": "%s", "language": "%s", "devices": [{"name": "Kitchen Light", "domain": "light"}]}\n' "$2" "$1" |
    installed intents match)
  grep -q "\"intent\":\"$3\"" <<<"$out"
}
check "installed qwenedge intents match finds HassTurnOn in English" local_match en "turn on the kitchen light" HassTurnOn
check "installed qwenedge intents match finds HassTurnOff in German" local_match de "schalte Kitchen Light aus" HassTurnOff
# A fixture model from deploy/test.sh, when there is one, for the checks that need a valid model.
fixtures=${QWENEDGE_FIXTURES:-${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}/fixtures/current}
model="$fixtures/tiny-a/int4"
[ -f "$model/genai_config.json" ] || model=""
if [ -n "$model" ]; then
  check "installed qwenedge generate runs a model" \
    installed generate --model "$model" --prompt "Hello" --max-tokens 4 >/dev/null
else
  say "no fixture model (run deploy/test.sh first): skipping the checks that need a model"
fi

# doctor, from the installed paths.
doctor_json_ok() {  # doctor_json_ok FILE: the JSON names the installed library and its version
  python3 - "$1" "$root/usr/lib/qwenedge/$ortname" "$ortversion" <<'PY'
import json, os, sys
path, lib, version = sys.argv[1:]
try:
    doc = json.load(open(path))
except ValueError as e:
    sys.exit(f"doctor --json did not print one JSON document: {e}")
ort = doc.get("onnxruntime") if isinstance(doc, dict) else None
if not isinstance(ort, dict):
    keys = list(doc)[:20] if isinstance(doc, dict) else type(doc).__name__
    sys.exit(f"doctor --json has no 'onnxruntime' object (top level: {keys})")
got = ort.get("library")
if not isinstance(got, str) or os.path.realpath(got) != os.path.realpath(lib):
    sys.exit(f"onnxruntime.library is {got!r}, not the installed {lib}")
if ort.get("version") != version:
    sys.exit(f"onnxruntime.version is {ort.get('version')!r}, expected {version!r}")
PY
}
if ! installed doctor --help >/dev/null 2>&1; then
  failures+=("qwenedge doctor: the installed binary has no 'doctor' subcommand ('qwenedge doctor --help' failed)")
  say "FAIL: the installed binary has no 'doctor' subcommand; skipping the doctor checks"
else
  # The packaged configuration: no model is installed, which doctor may count as fatal
  # (exit 1); anything else must be fine, and a usage error (2) or a crash is a failure.
  set +e
  installed doctor --config "$root/etc/qwenedge/config.toml" >"$tmp/doctor.txt" 2>&1
  rc=$?
  installed doctor --json --config "$root/etc/qwenedge/config.toml" >"$tmp/doctor.json" 2>"$tmp/doctor.err"
  rc_json=$?
  set -e
  sed 's/^/  doctor: /' "$tmp/doctor.txt" >&2
  check "qwenedge doctor without a model exits 0 or 1 (got $rc)" test "$rc" -le 1
  check "qwenedge doctor --json without a model exits 0 or 1 (got $rc_json)" test "$rc_json" -le 1
  if doctor_json_ok "$tmp/doctor.json"; then
    checks=$((checks + 1))
  else
    cat "$tmp/doctor.json" "$tmp/doctor.err" >&2
    failures+=("qwenedge doctor --json does not report the installed ONNX Runtime $ortversion")
  fi
  # With a valid model configured nothing is fatal: exit 0.
  if [ -n "$model" ]; then
    sed "/^\[model\]/,/^\[/s|^path = .*|path = \"$model\"|" "$root/etc/qwenedge/config.toml" > "$tmp/config-model.toml"
    set +e
    installed doctor --json --config "$tmp/config-model.toml" >"$tmp/doctor-model.json" 2>"$tmp/doctor-model.err"
    rc=$?
    set -e
    if [ "$rc" = 0 ] && doctor_json_ok "$tmp/doctor-model.json"; then
      checks=$((checks + 1))
    else
      cat "$tmp/doctor-model.json" "$tmp/doctor-model.err" >&2
      failures+=("qwenedge doctor --json with the fixture model $model configured exited $rc (expected 0)")
    fi
  fi
fi

# --- upgrade (reinstall), with a model present and only the service enabled by the administrator
mkdir -p "$root/var/lib/qwenedge/models/qwen3.5-0.8b-int4"
echo '{}' > "$root/var/lib/qwenedge/models/qwen3.5-0.8b-int4/genai_config.json"
systemctl --root="$root" --quiet enable qwenedge.service
echo '# local change' >> "$root/etc/qwenedge/config.toml"
dpkg_root --install "$deb" >"$tmp/upgrade.log" 2>&1 || { cat "$tmp/upgrade.log" >&2; die "reinstalling the package failed"; }
check "with a model present, no no-model guidance" test -z "$(grep 'no model installed' "$tmp/upgrade.log")"
check "without systemd, postinst says it started nothing" grep -q 'systemd is not running here' "$tmp/upgrade.log"
check "an upgrade keeps qwenedge.socket disabled" test ! -e "$root/etc/systemd/system/sockets.target.wants/qwenedge.socket"
check "an upgrade keeps qwenedge.service enabled" \
  test "$(readlink "$root/etc/systemd/system/multi-user.target.wants/qwenedge.service")" = /usr/lib/systemd/system/qwenedge.service
check "an upgrade keeps the local config.toml" grep -qx '# local change' "$root/etc/qwenedge/config.toml"

# --- remove, then purge ------------------------------------------------------------------
dpkg_root --remove qwenedge >"$tmp/remove.log" 2>&1 || { cat "$tmp/remove.log" >&2; die "dpkg --remove failed"; }
check "remove deletes /usr/bin/qwenedge" test ! -e "$root/usr/bin/qwenedge"
check "remove deletes /usr/lib/qwenedge" test ! -e "$root/usr/lib/qwenedge"
check "remove keeps config.toml" test -f "$root/etc/qwenedge/config.toml"
check "remove keeps the models" test -d "$root/var/lib/qwenedge/models/qwen3.5-0.8b-int4"
dpkg_root --purge qwenedge >"$tmp/purge.log" 2>&1 || { cat "$tmp/purge.log" >&2; die "dpkg --purge failed"; }
check "purge deletes /etc/qwenedge" test ! -e "$root/etc/qwenedge"
check "purge deletes /var/lib/qwenedge" test ! -e "$root/var/lib/qwenedge"
check "purge deletes the enable links" test ! -e "$root/etc/systemd/system/multi-user.target.wants/qwenedge.service"
check "purge leaves no file of the package" \
  test -z "$(find "$root/usr" -name '*qwenedge*' 2>/dev/null)"
check "dpkg no longer knows qwenedge" test -z "$(dpkg --root="$root" -s qwenedge 2>/dev/null | grep '^Status: install')"

elapsed=$(( $(date +%s) - started ))
if [ ${#failures[@]} -gt 0 ]; then
  say "${#failures[@]} of $((checks + ${#failures[@]})) checks failed (${elapsed}s):"
  for f in "${failures[@]}"; do echo "  - $f" >&2; done
  exit 1
fi
say "ok: $checks checks passed (${elapsed}s)"
