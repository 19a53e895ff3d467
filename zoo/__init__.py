"""zoo: PyTorch image models (timm, torchvision) as native Keras 3 models with verified parity.

Importing `zoo` imports neither torch nor TensorFlow: running converted models never needs torch,
and a converting process must import torch before TensorFlow (`zoo.convert` does it for you as
long as it is the first of the two to run). It does make sure zoo's custom Keras layers are
registered whenever Keras is imported, so `keras.saving.load_model` reads any `.keras` file zoo
wrote after a plain `import zoo` (zoo/registration.py).
"""
from zoo import registration
from zoo.api import convert, create_model, decode_predictions, list_models, preprocess
from zoo.catalog import resolve_name
from zoo.errors import (
                        MappingError,
                        RecipeError,
                        SourceError,
                        UnknownModelError,
                        ValidationError,
                        ZooError,
)

# The one definition of the version: pyproject.toml reads it from here (setuptools dynamic version).
__version__ = "0.1.0"
__all__ = ["convert", "create_model", "list_models", "resolve_name", "preprocess", "decode_predictions",
           "ZooError",
           "RecipeError", "UnknownModelError", "SourceError", "MappingError", "ValidationError"]

registration.install()
