#!/usr/bin/env bash
# Builds, once, a Debian chroot with the Python that Home Assistant needs and Home Assistant Core
# itself in a venv, with every requirement of the integrations the Home Assistant test loads
# installed ahead (HA installs nothing at run time), from Debian's packages and PyPI only.
# Cached under $QWENEDGE_CACHE/ha/<suite>-<version>-<hash of this script>; prints that path.
#
#   HA_VERSION (2026.11.0, which requires Python >= 3.14.2: Debian forky's python3)
#   HA_SUITE (forky), MIRROR (http://deb.debian.org/debian)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=${HA_VERSION:-2026.11.0}
suite=${HA_SUITE:-forky}
mirror=${MIRROR:-http://deb.debian.org/debian}
cache=${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}
key=$(cat "$0" "$here/requirements.py" | sha256sum | cut -c1-12)
root="$cache/ha/$suite-$version-$key"
venv=/opt/ha
log() { echo "ha-setup: $*" >&2; }

if [ -e "$root/.ready" ]; then
  echo "$root"
  exit 0
fi
# Integrations the test loads: configuration.yaml's, Home Assistant's always-loaded ones, and the
# two set up through config flows. Ollama's ai_task platform imports camera -> stream at import
# time (numpy, av, PyTurboJPEG) without declaring them, so those come too.
domains="homeassistant persistent_notification logger network system_log analytics
 application_credentials backup frontend hardware labs system_health automation person scene
 script tag zone counter input_boolean input_button input_datetime input_number input_select
 input_text schedule timer http api websocket_api auth onboarding config conversation
 assist_pipeline intent template light switch wyoming ollama ai_task camera stream image
 media_source"

command -v debootstrap >/dev/null || { log "installing debootstrap"; apt-get install -y -qq debootstrap >/dev/null; }
partial="$root.partial"
if [ -d "$partial" ]; then
  # An interrupted build: nothing is mounted inside it (mounts live only while a command runs).
  if grep -q " $partial/" /proc/mounts; then
    log "$partial has mounts; unmount them first"; exit 1
  fi
  rm -rf --one-file-system "$partial"
fi
mkdir -p "$partial"
t0=$(date +%s)
script=""
# bookworm's debootstrap has no script for later code names; they bootstrap like sid.
[ -e "/usr/share/debootstrap/scripts/$suite" ] || script=/usr/share/debootstrap/scripts/sid
log "debootstrap $suite (minbase) into $partial"
nice debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$partial" "$mirror" $script >&2
# The host's trust store (it may hold a site's own CA) and resolver, so PyPI is reachable inside.
cp -L /etc/resolv.conf "$partial/etc/resolv.conf"
cp -L /etc/ssl/certs/ca-certificates.crt "$partial/etc/ssl/certs/ca-certificates.crt"

inch() {
  chroot "$partial" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=$venv/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} "$@"
}
mount -t proc proc "$partial/proc"
trap 'umount -l "$partial/proc" 2>/dev/null || true' EXIT
# Compilers: a few pinned requirements have no wheel for this Python on PyPI (lru-dict,
# pyspeex-noise) and build from source. The testing suites' Release files may be past their
# Valid-Until on a mirror; debootstrap does not check it, apt does.
log "build tools (apt, in the chroot)"
inch sh -c "apt-get -o Acquire::Check-Valid-Until=false update -qq && \
  apt-get install -y -qq --no-install-recommends gcc g++ libc6-dev python3-dev libturbojpeg0" >&2
log "venv and homeassistant==$version"
inch python3 -m venv $venv
inch nice $venv/bin/pip install -q --disable-pip-version-check uv >&2
inch nice uv pip install -q --compile-bytecode --python $venv/bin/python "homeassistant==$version" >&2
cp "$here/requirements.py" "$partial/tmp/requirements.py"
inch $venv/bin/python /tmp/requirements.py $domains > "$partial/tmp/ha-requirements.txt"
log "integration requirements: $(grep -vc '^#' "$partial/tmp/ha-requirements.txt")"
package=$(inch $venv/bin/python -c 'import homeassistant, os; print(os.path.dirname(homeassistant.__file__))')
inch nice uv pip install -q --compile-bytecode --python $venv/bin/python \
  -r /tmp/ha-requirements.txt --constraint "$package/package_constraints.txt" >&2
inch $venv/bin/python -c 'import importlib.metadata as m
for p in ["homeassistant", "wyoming", "ollama", "hassil", "home-assistant-intents"]: print(p, m.version(p))' > "$partial/versions.txt"
rm -rf "$partial/root/.cache"
umount -l "$partial/proc"
trap - EXIT
mv "$partial" "$root"
touch "$root/.ready"
log "ready in $(( $(date +%s) - t0 ))s: $(tr '\n' ' ' < "$root/versions.txt")"
echo "$root"
