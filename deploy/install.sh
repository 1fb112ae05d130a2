#!/usr/bin/env bash
# Installs qwenedge on this device from its Debian package, puts a model in place and starts
# the daemon.
#
# usage: deploy/install.sh [--deb PATH] [--model MODEL_ID | --model-dir DIR | --no-model]
#                          [--precision int4|fp32]
#   --deb        the package (default: the newest target/deb/qwenedge_*_<arch>.deb, which
#                deploy/package-deb.sh writes)
#   --model      Hugging Face model to export with models/export.sh (default Qwen/Qwen3.5-0.8B);
#                needs huggingface.co, and a few GB of disk for the Python export tools
#   --model-dir  install a model directory exported elsewhere (copied into the models directory)
#   --no-model   install the package only
#   --precision  for --model: int4 (default) or fp32
# The model goes to /var/lib/qwenedge/models/<name>. /etc/qwenedge/config.toml is pointed at it
# when its model.path is still the packaged default; a path changed by hand is left alone.
# Then qwenedge.socket and qwenedge.service are enabled and (re)started. Run as root (or it
# re-runs itself with sudo).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

args=("$@")
deb=""
model=Qwen/Qwen3.5-0.8B
model_dir=""
no_model=0
precision=int4
while [ $# -gt 0 ]; do
  case "$1" in
    --deb) deb="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --model-dir) model_dir="$2"; shift 2 ;;
    --no-model) no_model=1; shift ;;
    --precision) precision="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "install: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "install: $*" >&2; }
die() { echo "install: $*" >&2; exit 1; }
case "$precision" in int4|fp32) ;; *) die "--precision must be int4 or fp32" ;; esac

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "run as root"
  exec sudo -- "$0" "${args[@]}"
fi

config=/etc/qwenedge/config.toml
models=/var/lib/qwenedge/models
packaged_model=$models/qwen3.5-0.8b-int4
command -v dpkg >/dev/null || die "this is not a Debian-based system (no dpkg)"
arch=$(dpkg --print-architecture)

# --- the package ---------------------------------------------------------------------------
if [ -z "$deb" ]; then
  deb=$(find "$root/target/deb" -maxdepth 1 -name "qwenedge_*_$arch.deb" 2>/dev/null | sort -V | tail -n1)
  [ -n "$deb" ] || die "no package given and none in target/deb: build one with deploy/package-deb.sh (or pass --deb PATH)"
fi
[ -f "$deb" ] || die "$deb does not exist"
deb=$(readlink -f "$deb")
deb_arch=$(dpkg-deb --field "$deb" Architecture)
[ "$deb_arch" = "$arch" ] || die "$deb is for $deb_arch, this machine is $arch"
say "installing $(basename "$deb") (a no-model notice from the package is expected: the model comes next)"
export DEBIAN_FRONTEND=noninteractive
# --force-confold: an upgrade keeps a locally changed /etc/qwenedge/config.toml.
if command -v apt-get >/dev/null; then
  apt-get install -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$deb" ||
    die "apt-get could not install $deb (its dependencies: $(dpkg-deb --field "$deb" Depends))"
else
  dpkg --force-confdef --force-confold -i "$deb" || die "dpkg could not install $deb"
fi

# --- the model -----------------------------------------------------------------------------
copy_hint() {
  cat >&2 <<EOF
install: To use a model exported on another machine (one with access to huggingface.co and a
install: qwenedge checkout), export it there and copy the directory here:
install:     models/export.sh $model            # prints the model directory
install:     rsync -a <that directory> $(hostname):/tmp/
install: then, on this machine:
install:     sudo deploy/install.sh --deb $deb --model-dir /tmp/<directory name>
install: (or copy it to $models/<name> yourself, set model.path in $config and run
install: sudo systemctl restart qwenedge.socket qwenedge.service).
EOF
}
has_model() { [ -f "$1/genai_config.json" ] && [ -f "$1/model.onnx" ] && [ -f "$1/tokenizer.json" ]; }

target=""
if [ "$no_model" = 1 ]; then
  say "--no-model: not installing a model"
elif [ -n "$model_dir" ]; then
  [ -d "$model_dir" ] || die "--model-dir $model_dir is not a directory"
  has_model "$model_dir" || die "$model_dir is not a model directory (it needs genai_config.json, model.onnx and tokenizer.json, as models/export.sh writes them)"
  src=$(readlink -f "$model_dir")
  target="$models/$(basename "$src")"
  if [ "$src" != "$target" ]; then
    say "copying $src to $target"
    rm -rf "$target.tmp"
    cp -r "$src" "$target.tmp"
    rm -rf "$target"
    mv "$target.tmp" "$target"
  fi
else
  name=$(basename "$model" | tr '[:upper:]' '[:lower:]')-$precision
  target="$models/$name"
  if has_model "$target"; then
    say "$target is already there"
  else
    [ -f "$root/models/export.sh" ] || { say "models/export.sh is not next to this script (run install.sh from a qwenedge checkout)"; copy_hint; exit 1; }
    command -v python3 >/dev/null || { apt-get install -y python3 >&2 || true; }
    if ! python3 -c 'import urllib.request as u; u.urlopen("https://huggingface.co", timeout=10)' 2>/dev/null; then
      say "huggingface.co is not reachable from this machine, so $model cannot be exported here."
      say "The package is installed; only the model is missing."
      copy_hint
      exit 1
    fi
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
      say "installing python3-venv (for the export tools)"
      apt-get install -y python3-venv python3-pip >&2 || die "could not install python3-venv"
    fi
    say "exporting $model ($precision) to $target; the first run installs the export tools (several GB, minutes)"
    bash "$root/models/export.sh" --precision "$precision" --out "$target" "$model" >/dev/null ||
      die "models/export.sh failed for $model; see the messages above"
  fi
fi
if [ -n "$target" ]; then
  # Root owns the files, the daemon (user qwenedge) reads them.
  chown -R root:root "$target"
  chmod -R u+rwX,go+rX,go-w "$target"
fi

# --- the configuration ---------------------------------------------------------------------
current=$(sed -n "/^\[model\]/,/^\[/s/^[[:space:]]*path[[:space:]]*=[[:space:]]*[\"']\([^\"']*\)[\"'].*/\1/p" "$config" | head -n1)
if [ -n "$target" ] && [ "$current" != "$target" ]; then
  if [ "$current" = "$packaged_model" ]; then
    sed -i "/^\[model\]/,/^\[/s|^\([[:space:]]*path[[:space:]]*=[[:space:]]*\).*|\1\"$target\"|" "$config"
    say "model.path in $config now points at $target"
  else
    say "model.path in $config is $current (changed by hand), so it was left alone; to use the new"
    say "model, set   path = \"$target\"   in its [model] section and run: sudo systemctl reload qwenedge"
  fi
fi
current=$(sed -n "/^\[model\]/,/^\[/s/^[[:space:]]*path[[:space:]]*=[[:space:]]*[\"']\([^\"']*\)[\"'].*/\1/p" "$config" | head -n1)

# --- start ---------------------------------------------------------------------------------
if ! has_model "$current"; then
  say "no model at $current (model.path in $config), so the daemon was not started."
  [ "$no_model" = 1 ] || copy_hint
  exit 0
fi
if [ ! -d /run/systemd/system ]; then
  say "systemd is not running on this machine (a container?); start the daemon by hand:"
  say "    install -d -o qwenedge -g qwenedge /run/qwenedge"
  say "    runuser -u qwenedge -- qwenedge serve --config $config"
  exit 0
fi
systemctl enable --quiet qwenedge.socket qwenedge.service
systemctl start qwenedge.socket
say "starting qwenedge.service with $current (loading the model can take a minute on a small board)"
if ! systemctl restart qwenedge.service; then
  journalctl -u qwenedge.service -n 20 --no-pager >&2 || true
  die "qwenedge.service did not start; the lines above say why (systemctl status qwenedge)"
fi
if answer=$(timeout 120 qwenedge ask --max-tokens 16 "Say hello in five words." 2>&1); then
  say "the daemon answers: $answer"
else
  say "the daemon is running but a test request failed: $answer"
  exit 1
fi
cat >&2 <<EOF
install: qwenedge is running: socket /run/qwenedge/qwenedge.sock, model $current
install: Users who should talk to it need the group qwenedge:  sudo usermod -aG qwenedge <user>
install: Try:  qwenedge ask "Turn the kitchen lights to 40 percent"
install: Check: qwenedge doctor    Logs: journalctl -u qwenedge
EOF
