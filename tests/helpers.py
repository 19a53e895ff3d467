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


def parity_at(name, height, width, batch=2, **convert_kwargs):
    """Convert `name` in memory (random, perturbed weights) and compare the Keras model with the
    same perturbed torch model (fixed seed) on a (height, width) input. Returns max relative error
    of the logits. Use odd, non-square sizes: that is where padding mistakes show."""
    import numpy as np
    import torch

    import zoo
    from zoo.catalog import get_variant
    from zoo.conversion.sources import load_torch_model

    model, _report = zoo.convert(name, **convert_kwargs)
    variant, tag = get_variant(name)
    tm = load_torch_model(variant, tag, "random", convert_kwargs.get("num_classes"),
                          convert_kwargs.get("in_chans"))
    x = np.random.default_rng(3).standard_normal((batch, height, width, tm.in_chans)).astype(np.float32)
    with torch.no_grad():
        ref = tm.module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    got = np.asarray(model.predict_on_batch(x))
    return float(np.abs(got - ref).max() / np.abs(ref).max())
