"""Keras builders, one module per family. The registry holds import strings so that listing and
validating recipes never imports Keras."""
from __future__ import annotations

import importlib

BUILDERS: dict[str, str] = {
    "resnet": "zoo.models.resnet:resnet",
    "vgg": "zoo.models.vgg:vgg",
    "alexnet": "zoo.models.alexnet:alexnet",
    "squeezenet": "zoo.models.squeezenet:squeezenet",
    "googlenet": "zoo.models.googlenet:googlenet",
    "inception_v3": "zoo.models.inception:inception_v3",
    "densenet": "zoo.models.densenet:densenet",
    "mobilenet_v2": "zoo.models.mobilenet:mobilenet_v2",
    "mobilenet_v3": "zoo.models.mobilenet:mobilenet_v3",
    "mnasnet": "zoo.models.mnasnet:mnasnet",
    "shufflenet_v2": "zoo.models.shufflenet:shufflenet_v2",
    "efficientnet": "zoo.models.efficientnet:efficientnet",
    "efficientnet_v2": "zoo.models.efficientnet:efficientnet_v2",
    "regnet": "zoo.models.regnet:regnet",
    "convnext": "zoo.models.convnext:convnext",
    "resnetv2": "zoo.models.resnetv2:resnetv2",
    "cspnet": "zoo.models.cspnet:cspnet",
    "xception": "zoo.models.xception:xception",
    "vit": "zoo.models.vit:vit",
    "beit": "zoo.models.beit:beit",
    "mixer": "zoo.models.mixer:mixer",
    "maxvit": "zoo.models.maxvit:maxvit",
    "segmentation": "zoo.models.segmentation:segmentation",
    "mobilevit": "zoo.models.mobilevit:mobilevit",
    "levit": "zoo.models.levit:levit",
    "swin": "zoo.models.swin:swin",
    "ssdlite": "zoo.models.detection:ssdlite320_mobilenet_v3_large",
}


def is_builder_name(name: str) -> bool:
    """A registered name, or `python:<module>:<callable>` for a user's own builder."""
    if isinstance(name, str) and name.startswith("python:"):
        parts = name.split(":")
        return len(parts) == 3 and all(parts)
    return name in BUILDERS


def get_builder(name: str):
    from zoo.errors import ZooError

    if not is_builder_name(name):
        raise ZooError(f"unknown Keras builder {name!r}; known: {sorted(BUILDERS)} or "
                       "python:<module>:<callable>")
    module, attr = (name.split(":")[1:] if name.startswith("python:") else BUILDERS[name].split(":"))
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ZooError(f"cannot import Keras builder {name!r}: {e}") from None


def build(name: str, kwargs: dict):
    """The Keras model of builder `name` called with `kwargs` (as a config.json records them)."""
    return get_builder(name)(**kwargs)


def builder_kwargs(name: str, recipe_kwargs: dict, **offered) -> dict:
    """The recipe's kwargs plus those of `offered` (classes, input_shape) the builder takes: every
    registered builder takes the keras.applications arguments; a user's `python:` builder gets
    only the ones its signature names (or all, if it takes **kwargs)."""
    import inspect

    offered = {k: v for k, v in offered.items() if v is not None}
    if name.startswith("python:"):
        params = inspect.signature(get_builder(name), follow_wrapped=False).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            offered = {k: v for k, v in offered.items() if k in params}
    return dict(recipe_kwargs, **offered)


def feature_info(model) -> list[dict]:
    """The feature stages of a built model, in graph order, like timm's `feature_info`:
    [{"name": "stage1", "channels": 256, "reduction": 4}, ...]; read from its FeatureStage layers
    (`zoo.models.blocks.stage_end`), so a reloaded `.keras` model has them too."""
    from zoo.models.blocks import feature_layers

    return [{"name": layer.name, "channels": int(layer.output.shape[-1]),
             "reduction": layer.reduction} for layer in feature_layers(model)]
