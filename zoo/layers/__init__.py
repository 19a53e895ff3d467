"""Layers with no exact Keras twin, one module per concern. Importing this package imports every
module in it, which registers the layers (`@keras.saving.register_keras_serializable`) so that
`.keras` files load after `import zoo.layers`."""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

from zoo.layers.pooling import TorchMaxPool2D  # noqa: E402

__all__ = ["TorchMaxPool2D"]
