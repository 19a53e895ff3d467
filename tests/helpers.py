"""Shared test utilities (imported after conftest has loaded torch first)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = 64   # validation resolution for end-to-end tests: small, still 2x2 at stage 4


def run_script(script, *args, env=None, timeout=900):
    """Run scripts/<script> in a fresh interpreter; returns CompletedProcess (text)."""
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)],
                          capture_output=True, text=True, env=e, timeout=timeout, cwd=ROOT)


def run_python(code, env=None, timeout=600):
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=ROOT)
