#!/usr/bin/env bash
# Installs the Debian packages qwenedge's scripts need, only those that are missing.
# usage: deploy/install-deps.sh [test]   ("test" adds what the test suite needs)
set -euo pipefail
need=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v cc >/dev/null || need+=(gcc libc6-dev)
if [ "${1:-}" = test ]; then
  # systemd-analyze checks the unit files; it works without systemd running.
  command -v systemd-analyze >/dev/null || need+=(systemd)
  # The MQTT tests start their own Mosquitto brokers on free loopback ports (the package's
  # system service is not used), and make TLS certificates with openssl.
  [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || need+=(mosquitto)
  command -v openssl >/dev/null || need+=(openssl)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
fi
if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found; install Rust >= 1.91 (https://rustup.rs) and re-run" >&2
  exit 1
fi
if [ "${1:-}" = test ]; then
  # The test command checks formatting and lints; both come with rustup's default profile.
  for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
      echo "install-deps: 'cargo $tool' is missing; add it with: rustup component add $([ "$tool" = fmt ] && echo rustfmt || echo clippy)" >&2
      exit 1
    fi
  done
fi
