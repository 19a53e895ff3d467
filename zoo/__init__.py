"""zoo: PyTorch image models (timm, torchvision) as native Keras 3 models with verified parity.

Importing `zoo` imports neither torch nor TensorFlow: running converted models never needs torch,
and a converting process must import torch before TensorFlow (`zoo.convert` does it for you as
long as it is the first of the two to run).
"""
from zoo.api import convert, create_model, list_models, preprocess
from zoo.errors import (
                        MappingError,
                        RecipeError,
                        SourceError,
                        UnknownModelError,
                        ValidationError,
                        ZooError,
)

__version__ = "0.1.0"
__all__ = ["convert", "create_model", "list_models", "preprocess", "ZooError", "RecipeError",
           "UnknownModelError", "SourceError", "MappingError", "ValidationError"]
