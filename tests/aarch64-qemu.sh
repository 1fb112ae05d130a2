#!/usr/bin/env bash
# End-to-end check of the aarch64 build under user-mode emulation (qemu-aarch64):
#   1. installs qemu-user >= 10 when missing or older (tests/qemu-user.sh: Debian bookworm's 7.2
#      crashes inside ONNX Runtime's CPU detection; bookworm-backports has 10.x);
#   2. builds the aarch64 and x86_64 bundles with deploy/build.sh (each binary with its own
#      official libonnxruntime in <bundle>/lib/qwenedge/);
#   3. runs the unit tests of tract's int8 kernels as aarch64 code under qemu, once on an emulated
#      Cortex-A76 (the SDOT kernel) and once on a Cortex-A72 (the widening-multiply kernel): each
#      must give the portable kernel's bits;
#   4. for each model below, starts both daemons (`qwenedge serve`) on temporary Unix sockets, the
#      aarch64 one as `qemu-aarch64 -L /usr/aarch64-linux-gnu <bundle>/bin/qwenedge`, each finding
#      its ONNX Runtime through the bundle layout (ORT_DYLIB_PATH is unset); sends each one greedy
#      raw completion (the first reference prompt) over the socket; compares the answers; stops
#      both with SIGTERM and requires a clean exit.
#
# The models (tiny random-weight test fixtures):
#   int4-fp32act  the int4 fixture with MatMulNBits accuracy_level 4 -> 1 (same int4 weights, the
#                 activations stay fp32): aarch64 must give exactly the x86_64 tokens;
#   fp32          the fp32 fixture: aarch64 must give exactly the x86_64 tokens;
#   int4          the int4 fixture as exported (accuracy_level 4): aarch64 must serve the request;
#                 the text is compared and printed but may differ. With accuracy_level 4 ONNX
#                 Runtime quantizes the activations to int8 and the two architectures do it
#                 differently (x86_64 MLAS: symmetric int8 per 32-value block; aarch64 with the
#                 dot-product extension: KleidiAI kernels, asymmetric int8 per row), and these
#                 random-weight models are sensitive enough for that to change the greedy tokens.
#   tract-int4    the int4 fixture again, served by the aarch64 binary alone with no libonnxruntime
#                 anywhere it looks: model.backend "auto" must fall back to the pure-Rust tract
#                 backend (checked in the `models` answer) and give exactly the x86_64 ONNX Runtime
#                 daemon's tokens (tract computes the int8 activations as x86_64 ONNX Runtime does).
#                 The emulated Cortex-A76 has the dot-product extension (tract's SDOT kernel);
#   tract-int4-a72  the same on an emulated Cortex-A72 (the Raspberry Pi 4's core), which has
#                 not: tract's widening-multiply NEON kernel must give the same tokens.
#
# usage: tests/aarch64-qemu.sh [--tokens N]      (default 8 new tokens)
# Needs the test fixtures: $QWENEDGE_FIXTURES, else $QWENEDGE_CACHE/fixtures/current (made by
# deploy/test.sh). QWENEDGE_QEMU_TIMEOUT (seconds, default 300) times QWENEDGE_TEST_TIME_SCALE
# (default 1, as for the cargo tests: raise it on a slow or busy machine) bounds each model load,
# request and stop under emulation; a wait that runs out names what it waited for, how long, and
# shows the daemon's last log lines; QEMU_CPU picks the emulated CPU (default cortex-a76, the Raspberry Pi 5's core,
# with the same instruction set extensions as the Jetson Orin's A78AE; "max" enables everything
# qemu has, SVE and SME included). Exits non-zero with a reason on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
say() { echo "aarch64-qemu: $*" >&2; }
fail() { echo "aarch64-qemu: FAIL: $*" >&2; exit 1; }

tokens=8
while [ $# -gt 0 ]; do
  case "$1" in
    --tokens) [ $# -ge 2 ] || fail "--tokens needs a value"; tokens="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) fail "unknown argument: $1 (usage: tests/aarch64-qemu.sh [--tokens N])" ;;
  esac
done
case "$tokens" in ''|*[!0-9]*|0) fail "--tokens must be a positive integer, not '$tokens'" ;; esac
[ "$(uname -m)" = x86_64 ] || fail "this check runs on an x86_64 machine (this one is $(uname -m))"
timeout_s=$(awk -v b="${QWENEDGE_QEMU_TIMEOUT:-300}" -v s="${QWENEDGE_TEST_TIME_SCALE:-1}" \
  'BEGIN { if (b + 0 <= 0 || s + 0 <= 0) exit 1; printf "%d", b * s + 0.5 }') \
  || fail "QWENEDGE_QEMU_TIMEOUT='${QWENEDGE_QEMU_TIMEOUT:-}' and QWENEDGE_TEST_TIME_SCALE='${QWENEDGE_TEST_TIME_SCALE:-}' must be positive numbers"
export QEMU_CPU="${QEMU_CPU:-cortex-a76}"
cache="${QWENEDGE_CACHE:-$HOME/.cache/qwenedge}"
fixtures="${QWENEDGE_FIXTURES:-$cache/fixtures/current}"
reference="$fixtures/tiny-a/reference.json"
for f in "$reference" "$fixtures/tiny-a/int4/model.onnx" "$fixtures/tiny-a/fp32/model.onnx"; do
  [ -f "$f" ] || fail "no test fixtures at $fixtures ($f is missing; run deploy/test.sh once, or set QWENEDGE_FIXTURES)"
done
python=$(command -v python3 || true)
[ -n "$python" ] || fail "python3 is needed (socket client)"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() {
  command -v apt-get >/dev/null || fail "missing $*, and apt-get is not available to install it"
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}

# --- 1. qemu-user >= 10 -----------------------------------------------------------------------
tests/qemu-user.sh || fail "qemu-user >= 10 could not be installed (see above)"
say "$(qemu-aarch64 --version | head -n1), emulated CPU: $QEMU_CPU"

# --- 2. bundles ---------------------------------------------------------------------------------
say "building the aarch64 bundle"
arm=$(deploy/build.sh --target aarch64 | tail -n1) || fail "deploy/build.sh --target aarch64 failed"
say "building the x86_64 bundle"
x86=$(deploy/build.sh --target x86_64 | tail -n1) || fail "deploy/build.sh --target x86_64 failed"
sysroot=/usr/aarch64-linux-gnu
# The emulated loader needs the aarch64 C and C++ runtimes (ONNX Runtime links libstdc++).
[ -e "$sysroot/lib/ld-linux-aarch64.so.1" ] || apt_install libc6-arm64-cross
[ -e "$sysroot/lib/libstdc++.so.6" ] || apt_install libstdc++6-arm64-cross

# --- 3. tract's aarch64 kernels -----------------------------------------------------------------
# The runner for the aarch64 target is qemu (.cargo/config.toml).
for cpu in cortex-a76 cortex-a72; do
  say "tract int8 kernel tests, emulated $cpu"
  out=$(QEMU_CPU="$cpu" cargo test --release --locked --target aarch64-unknown-linux-gnu -p qwenedge-engine --lib backend::tract::ops::quant 2>&1) \
    || { printf '%s\n' "$out" >&2; fail "tract's int8 kernel tests failed on an emulated $cpu"; }
  printf '%s\n' "$out" >&2
  # A filter that matches nothing passes with 0 tests: count them.
  printf '%s\n' "$out" | grep -Eq 'test result: ok\. [1-9][0-9]* passed' \
    || fail "no tract int8 kernel test ran on an emulated $cpu (did the module path change?)"
done

# --- 4. daemons ---------------------------------------------------------------------------------
tmp=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

prompt=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["prompts"][0]["text"], end="")' "$reference")

# The int4 fixture with accuracy_level 1 on every MatMulNBits node. The attribute is rewritten in
# the serialized graph (AttributeProto: name "accuracy_level", then i = 4 as one varint byte), so
# nothing but python3 is needed; the other files are hard links (or copies across filesystems:
# ONNX Runtime refuses external data reached through a symlink out of the model directory).
int4_fp32act="$tmp/int4-fp32act"
mkdir "$int4_fp32act"
for f in "$fixtures/tiny-a/int4"/*; do
  [ "$(basename "$f")" = model.onnx ] && continue
  ln "$f" "$int4_fp32act/" 2>/dev/null || cp "$f" "$int4_fp32act/"
done
"$python" - "$fixtures/tiny-a/int4/model.onnx" "$int4_fp32act/model.onnx" <<'PY' || exit 1
import sys
src, dst = sys.argv[1:]
graph = open(src, "rb").read()
attr = b"\x0a\x0eaccuracy_level\x18"
n = graph.count(attr + b"\x04")
if n == 0 or graph.count(attr) != n:
    sys.exit(f"aarch64-qemu: FAIL: {src}: expected MatMulNBits nodes with accuracy_level 4, "
             f"found {graph.count(attr)} accuracy_level attributes of which {n} are 4")
open(dst, "wb").write(graph.replace(attr + b"\x04", attr + b"\x01"))
print(f"aarch64-qemu: int4-fp32act: accuracy_level 4 -> 1 on {n} MatMulNBits nodes", file=sys.stderr)
PY

# start NAME MODEL COMMAND...: a daemon with its own configuration and socket, logging to NAME.log.
start() {
  local name="$1" model="$2"; shift 2
  cat >"$tmp/$name.toml" <<EOF
[model]
path = "$model"
threads = 1

[socket]
path = "$tmp/$name.sock"
EOF
  env -u ORT_DYLIB_PATH -u QWENEDGE__MODEL__ONNXRUNTIME_LIBRARY -u QWENEDGE__MODEL__PATH \
    -u QWENEDGE__SOCKET__PATH QWENEDGE_LOG=info \
    "$@" serve --config "$tmp/$name.toml" >"$tmp/$name.log" 2>&1 &
  pids+=("$!")
  echo "$!" >"$tmp/$name.pid"
}

# ready NAME: waits for the socket (the daemon binds it only once the model is loaded).
ready() {
  local name="$1" pid since=$SECONDS
  pid=$(cat "$tmp/$name.pid")
  while [ ! -S "$tmp/$name.sock" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$tmp/$name.log" >&2
      fail "the $name daemon exited before it was ready (log above)"
    fi
    if [ $((SECONDS - since)) -ge "$timeout_s" ]; then
      tail -n 20 "$tmp/$name.log" >&2
      fail "timed out after ${timeout_s}s waiting for the $name daemon to listen on its socket (its log's last lines above)"
    fi
    sleep 0.2
  done
}

# ask NAME: sends `models` and one greedy `complete` on one connection; prints one JSON line
# {"backend", "chosen", "library", "version", "text", "finish_reason", "usage", "timings"}.
ask() {
  "$python" - "$tmp/$1.sock" "$prompt" "$tokens" "$timeout_s" <<'PY'
import json, socket, sys
path, prompt, tokens, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(timeout)
s.connect(path)
reqs = [{"id": "m", "op": "models"},
        {"id": "c", "op": "complete", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": False}]
s.sendall("".join(json.dumps(r) + "\n" for r in reqs).encode())
terminal, buf = {}, b""
try:
    while len(terminal) < 2:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            ev = json.loads(line)
            if ev.get("event") != "token":
                terminal[ev.get("id")] = ev
except socket.timeout:
    sys.exit(f"timed out after {timeout:.0f}s waiting for the answers to `models` and one completion (got {sorted(map(str, terminal))})")
done = terminal.get("c")
if not done or done.get("event") != "done":
    sys.exit(f"the completion failed: {json.dumps(done)}")
def find(o, key):  # the backend's library/version, wherever the `models` event puts them
    if isinstance(o, dict):
        if key in o and isinstance(o[key], str):
            return o[key]
        o = list(o.values())
    if isinstance(o, list):
        for v in o:
            r = find(v, key)
            if r is not None:
                return r
    return None
def backend(o):  # the first {"backend": {...}} object of the `models` event
    if isinstance(o, dict):
        if isinstance(o.get("backend"), dict):
            return o["backend"]
        o = list(o.values())
    if isinstance(o, list):
        for v in o:
            r = backend(v)
            if r is not None:
                return r
    return None
models = terminal.get("m", {})
b = backend(models) or {}
print(json.dumps({"backend": b.get("name"), "chosen": b.get("chosen"),
                  "library": find(models, "library"), "version": find(models, "version"),
                  "text": done["text"], "finish_reason": done.get("finish_reason"),
                  "usage": done.get("usage"), "timings": done.get("timings")}, ensure_ascii=False))
PY
}

# stop NAME: SIGTERM, then a clean exit (status 0, socket file removed) within the timeout.
stop() {
  local name="$1" pid since=$SECONDS status=0
  pid=$(cat "$tmp/$name.pid")
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ $((SECONDS - since)) -lt "$timeout_s" ]; do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    tail -n 20 "$tmp/$name.log" >&2
    fail "timed out after ${timeout_s}s waiting for the $name daemon to exit after SIGTERM (its log's last lines above)"
  fi
  wait "$pid" || status=$?
  [ "$status" -eq 0 ] || { tail -n 10 "$tmp/$name.log" >&2; fail "the $name daemon exited with status $status after SIGTERM (log above)"; }
  [ ! -e "$tmp/$name.sock" ] || fail "the $name daemon left its socket file behind"
}

# check LABEL MODEL strict|report|tract [CPU]: one request to each build, compared (CPU: the
# core qemu emulates for the aarch64 daemon, default $QEMU_CPU).
#   strict  the aarch64 build with its ONNX Runtime must give the x86_64 build's tokens;
#   report  the same, printed but not required;
#   tract   the aarch64 binary alone (no libonnxruntime anywhere it looks: not beside it, no
#           ORT_DYLIB_PATH, an empty cache directory) with model.backend = "auto" must fall back
#           to the pure-Rust tract backend, say so, and give the x86_64 ONNX Runtime daemon's
#           tokens (tract computes the int4 ops as ONNX Runtime's x86_64 kernels do).
mismatch=""
check() {
  local label="$1" model="$2" mode="$3" cpu="${4:-$QEMU_CPU}" t0=$SECONDS x86_out arm_out verdict
  local arm_cmd=(env QEMU_CPU="$cpu" qemu-aarch64 -L "$sysroot" "$arm/bin/qwenedge")
  if [ "$mode" = tract ]; then
    mkdir -p "$tmp/nolib/bin" "$tmp/nolib/home"
    cp "$arm/bin/qwenedge" "$tmp/nolib/bin/qwenedge"
    arm_cmd=(env HOME="$tmp/nolib/home" QWENEDGE_CACHE="$tmp/nolib/home/cache" QEMU_CPU="$cpu" qemu-aarch64 -L "$sysroot" "$tmp/nolib/bin/qwenedge")
  fi
  start "x86-$label" "$model" "$x86/bin/qwenedge"
  start "arm-$label" "$model" "${arm_cmd[@]}"
  ready "x86-$label"
  x86_out=$(ask "x86-$label") || { tail -n 20 "$tmp/x86-$label.log" >&2; fail "x86_64 daemon, $label: request failed (its log's last lines above)"; }
  ready "arm-$label"
  arm_out=$(ask "arm-$label") || { tail -n 20 "$tmp/arm-$label.log" >&2; fail "aarch64 daemon, $label: request failed (its log's last lines above)"; }
  stop "x86-$label"
  stop "arm-$label"
  verdict=$("$python" - "$label" "$mode" "$x86_out" "$arm_out" "$x86" "$arm" <<'PY'
import json, os, sys
label, mode, x86, arm, x86_dir, arm_dir = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5], sys.argv[6]
for name, out, bundle in (("x86_64", x86, x86_dir), ("aarch64", arm, arm_dir)):
    lib = out["library"]
    if lib is not None and not os.path.realpath(lib).startswith(os.path.realpath(bundle) + os.sep):
        sys.exit(f"aarch64-qemu: FAIL: {label}: the {name} daemon loaded ONNX Runtime from {lib}, not from its bundle")
if x86["backend"] != "onnxruntime":
    sys.exit(f"aarch64-qemu: FAIL: {label}: the x86_64 daemon runs {x86['backend']}, not ONNX Runtime")
want = "tract" if mode == "tract" else "onnxruntime"
if arm["backend"] != want or (mode == "tract" and not (arm["chosen"] or "").startswith("auto: ONNX Runtime unavailable")):
    sys.exit(f"aarch64-qemu: FAIL: {label}: the aarch64 daemon should run {want}; it runs {arm['backend']} ({arm['chosen']})")
for name, out in (("x86_64", x86), ("aarch64", arm)):
    print(f"aarch64-qemu:   {name:<7} {json.dumps(out['text'], ensure_ascii=False)} "
          f"({out['usage']['completion_tokens']} tokens, {out['finish_reason']}, "
          f"{out['timings']['decode_tok_s']:.1f} tok/s, {out['backend']} {out['version']})", file=sys.stderr)
if mode == "tract":
    print(f"aarch64-qemu:   aarch64 backend chosen: {arm['chosen']}", file=sys.stderr)
same = all(arm[k] == x86[k] for k in ("text", "finish_reason", "usage"))
print("same" if same else "different")
PY
) || exit 1
  if [ "$verdict" = same ]; then
    say "$label: same greedy output ($((SECONDS - t0))s)"
  elif [ "$mode" = report ]; then
    say "$label: differs, as expected with int8 activations (see the header of $0)"
  else
    mismatch="$mismatch $label"
    say "$label: MISMATCH: the aarch64 greedy output differs from x86_64's"
  fi
}

say "prompt: $(printf '%q' "$prompt"), $tokens greedy tokens, models from $fixtures/tiny-a"
check int4-fp32act "$int4_fp32act" strict
check fp32 "$fixtures/tiny-a/fp32" strict
check int4 "$fixtures/tiny-a/int4" report
check tract-int4 "$fixtures/tiny-a/int4" tract
check tract-int4-a72 "$fixtures/tiny-a/int4" tract cortex-a72
pids=()
[ -z "$mismatch" ] || fail "greedy output differs between aarch64 and x86_64 for:$mismatch"
say "PASS: the aarch64 build serves over its socket under emulation and gives the x86_64 build's greedy tokens, with ONNX Runtime and, without it, with tract ($(( $(date +%s) - started ))s)"
