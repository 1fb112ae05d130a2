"""What every check script reports with: one line saying what failed, and a non-zero exit."""

import sys


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
