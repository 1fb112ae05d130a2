"""What every check script reports with (one line saying what failed, and a non-zero exit), and how
long it waits: every timeout is a base scaled by QWENEDGE_TEST_TIME_SCALE, which the Rust tests
set to their whole scale (tests/common/wait.rs), so a slow machine waits longer, never fails
sooner."""

import os
import sys


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def _scale():
    raw = os.environ.get("QWENEDGE_TEST_TIME_SCALE", "1")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        fail(f"QWENEDGE_TEST_TIME_SCALE={raw!r}: not a positive number (it multiplies every wait of the tests)")
    return value


SCALE = _scale()


def patience(seconds):
    """`seconds` (what the wait takes on an idle machine, with room) times the tests' time scale."""
    return seconds * SCALE
