"""Import torch, torchvision and timm before TensorFlow.

With this torch build, `import tensorflow` followed by `import torchvision`/`timm` segfaults, so a
converting process must bring the torch side in first. If TensorFlow is already loaded we raise a
clear error instead of crashing the interpreter.
"""
import sys

from zoo.errors import ImportOrderError

if "tensorflow" in sys.modules and not {"torchvision", "timm"} <= set(sys.modules):
    raise ImportOrderError(
        "tensorflow was imported before torch/torchvision/timm; importing them now would "
        "segfault. Convert in a fresh process, or `import zoo.conversion.torch_first` (or torch, "
        "torchvision and timm) before anything imports tensorflow or keras.")

import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

__all__ = ["torch", "torchvision", "timm"]
