import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on a 2-core machine: one thread each. With the
    # default pools (torch's OpenMP threads spin while waiting) the two workers oversubscribe
    # the cores and the suite is no faster than one process; single-threaded it is ~1.45x faster.
    # Set before torch and TensorFlow are imported: both read these once, at start-up.
    from zoo.worker_env import share_per_process, thread_env

    os.environ.update(thread_env(share_per_process(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1)))))
# torch, torchvision and timm must be imported before tensorflow/keras (else: segfault).
import pytest  # noqa: E402

import zoo.conversion.torch_first  # noqa: E402,F401

sys.path.insert(0, str(Path(__file__).resolve().parent))   # tests/helpers.py

from helpers import SMALL  # noqa: E402


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """converted(name) -> (output folder, report): each model converted once per session."""
    import zoo

    root = tmp_path_factory.mktemp("outputs")
    cache = {}

    def get(name):
        if name not in cache:
            # SavedModel too (opt-in since --formats): test_convert checks its parity and
            # test_hub publishes it (--saved-model)
            _model, report = zoo.convert(name, input_size=SMALL, out_dir=root,
                                         formats="weights.h5,keras,saved_model")
            cache[name] = (Path(report["output_dir"]), report)
        return cache[name]

    get.root = root
    return get


@pytest.fixture(scope="module")
def converted_small():
    """converted_small(name, input_size=SMALL) -> (keras model, report) of zoo.convert in memory
    (random, perturbed weights), each (name, size) converted once per test module (module scope:
    a session cache would keep every family's models, VGGs included, in memory to the end). Shared by the
    family tests: a test that alters a model must restore it, and one that monkeypatches a
    builder must get its model before patching."""
    import zoo

    cache = {}

    def get(name, input_size=SMALL):
        if (name, input_size) not in cache:
            cache[name, input_size] = zoo.convert(name, input_size=input_size)
        return cache[name, input_size]

    return get


@pytest.fixture(scope="module")
def torch_model():
    """torch_model(name) -> the perturbed torch module zoo.convert compares with (same seed:
    same weights), built once per test module. Shared: tests only read it (hooks they add are
    removed again); a test that changes it needs a fresh one."""
    from zoo.catalog import get_variant
    from zoo.conversion.sources import load_torch_model

    cache = {}

    def get(name):
        if name not in cache:
            variant, tag = get_variant(name)
            cache[name] = load_torch_model(variant, tag, "random").module
        return cache[name]

    return get


# "What we test against" in the README: outcomes of the hostile/fault/fuzz tests (robustness.py)
from robustness import (  # noqa: E402,F401
    pytest_configure,
    pytest_runtest_logreport,
    pytest_runtest_makereport,
    pytest_sessionfinish,
)
