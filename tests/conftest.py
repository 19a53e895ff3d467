import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
            _model, report = zoo.convert(name, input_size=SMALL, out_dir=root)
            cache[name] = (Path(report["output_dir"]), report)
        return cache[name]

    get.root = root
    return get
