"""Layers with no exact Keras twin. Importing this package registers them for `.keras` loading."""
from zoo.layers.pooling import TorchMaxPool2D

__all__ = ["TorchMaxPool2D"]
