"""Keras builders, one module per family. The registry holds import strings so that listing and
validating recipes never imports Keras."""
from __future__ import annotations

import importlib

BUILDERS: dict[str, str] = {
    "resnet": "zoo.models.resnet:resnet",
}


def get_builder(name: str):
    from zoo.errors import ZooError

    if name not in BUILDERS:
        raise ZooError(f"unknown Keras builder {name!r}; known: {sorted(BUILDERS)}")
    module, attr = BUILDERS[name].split(":")
    return getattr(importlib.import_module(module), attr)
