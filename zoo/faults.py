"""Deterministic crash points for fault-injection tests (tests/test_faults.py).

`ZOO_KILL_AT=<point>` makes the process SIGKILL itself when it reaches `<point>` — exactly what
the kernel's OOM killer or a power cut does, at a place a test can name. Unset (always, outside
the tests) a point costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

POINTS = ("map_weights", "export:weights.h5", "export:keras", "export:saved_model",
          "between_renames", "index_write", "publish")


def point(name: str) -> None:
    if os.environ.get("ZOO_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
