"""Public Python API. Nothing here imports torch; `convert` imports the conversion side lazily."""
from __future__ import annotations

import json
from pathlib import Path

from zoo import catalog
from zoo.errors import ZooError


def list_models(pattern: str | None = None) -> list[str]:
    """Catalogue names (`timm/resnet50`, `torchvision/resnet18`, ...), optionally fnmatch-filtered."""
    return catalog.list_models(pattern)


def convert(name, weights="random", num_classes=None, out_dir=None, in_chans=None,
            input_size=None, progress=None):
    """Convert a catalogue model (needs torch; see zoo.conversion.pipeline.convert)."""
    from zoo.conversion.pipeline import convert as _convert
    return _convert(name, weights=weights, num_classes=num_classes, in_chans=in_chans,
                    out_dir=out_dir, input_size=input_size, progress=progress)


def _config_for(path) -> tuple[dict, Path]:
    path = Path(path)
    if path.is_dir():
        cfg, weights = path / "config.json", path / "model.weights.h5"
    elif path.name.endswith(".weights.h5"):
        cfg, weights = path.parent / "config.json", path
    else:
        raise ZooError(f"{path}: expected an outputs/<name> folder or a .weights.h5 file")
    if not weights.is_file():
        raise ZooError(f"{weights} does not exist")
    if not cfg.is_file():
        raise ZooError(f"{cfg} does not exist (it records the builder and its arguments)")
    return json.loads(cfg.read_text()), weights


def create_model(name, pretrained=False, num_classes=None, include_top=True, input_shape=None,
                 pooling=None, classifier_activation=None, features_only=False, out_indices=None):
    """A Keras model for catalogue `name`, keras.applications-style.

    pretrained: False (random init), a local `.weights.h5` file or `outputs/<name>` folder, or True
    (published weights, downloaded and cached by `zoo.hub`; never a silent random fallback).
    The model takes normalised NHWC input (see `zoo.preprocess`) and returns logits.
    features_only: one output per feature stage (`zoo.models.feature_info`), or only those of
    out_indices (stage positions; negative counts from the end, as in timm).
    """
    import keras

    import zoo.layers  # noqa: F401 - custom layers used by builders
    from zoo.models import get_builder

    variant, _tag = catalog.get_variant(name)
    kwargs = dict(variant.builder_kwargs)
    weights = None
    if pretrained is True:
        from zoo import hub
        pretrained = hub.fetch(name)
    if pretrained:
        config, weights = _config_for(pretrained)
        if catalog.split_name(config.get("name", ""))[0] != variant.name:
            raise ZooError(f"{pretrained} holds a {config.get('name')} model, not {name}")
        kwargs = dict(config["builder_kwargs"])
        kwargs.pop("input_shape", None)
        weight_classes = kwargs.pop("classes")
        if include_top and num_classes not in (None, weight_classes):
            raise ZooError(f"the weights have {weight_classes} classes; num_classes="
                           f"{num_classes} needs include_top=False (then add your own head)")
        num_classes = weight_classes
    builder = get_builder(variant.builder)
    if pooling not in (None, "avg", "max"):
        raise ZooError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if out_indices is not None and not features_only:
        raise ZooError("out_indices selects feature stages: it needs features_only=True")
    # The builder knows where its features end (after MobileNet's/EfficientNet's 1x1 head conv,
    # like keras.applications and timm's forward_features); its layers are named as in `full`.
    headless = dict(include_top=False, pooling=pooling)
    if weights is None and not include_top and not features_only:
        return builder(**kwargs, classes=num_classes or 1000, input_shape=input_shape, **headless)
    # Weights: build the full model so that the weights file always matches, then cut the head.
    full = builder(**kwargs, classes=num_classes or 1000, input_shape=input_shape,
                   classifier_activation=classifier_activation)
    if weights is not None:
        full.load_weights(weights)
    if features_only:
        return keras.Model(full.inputs, [full.get_layer(n).output
                                         for n in _stage_layers(full, out_indices)],
                           name=full.name)
    if include_top:
        return full
    model = builder(**kwargs, classes=num_classes or 1000, input_shape=input_shape, **headless)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    return model


def _stage_layers(model, out_indices=None) -> list[str]:
    """Names of the model's feature stages (graph order), or of those at out_indices."""
    from zoo.models import feature_info

    names = [stage["name"] for stage in feature_info(model)]
    if out_indices is None:
        return names
    n = len(names)
    indices = (out_indices,) if isinstance(out_indices, int) else tuple(out_indices)
    bad = [i for i in indices if not isinstance(i, int) or not -n <= i < n]
    if bad or not indices:
        raise ZooError(f"out_indices {out_indices!r}: {model.name} has {n} feature stages, valid "
                       f"indices are {-n} ... {n - 1}")
    return [names[i] for i in indices]


def preprocess(name_or_dir, images, *, size=None):
    """uint8/float HWC image(s) -> normalised NHWC float32 batch, as the source model expects.

    Resize the shorter side to size / crop_pct, centre-crop `size`, scale to [0, 1], normalise
    with mean/std (from `config.json` of a converted model, else from the recipe). TF resizing is
    not PIL's: expect small pixel differences to the PyTorch pipeline (no antialias difference at
    downscale factors below 2 with bilinear)."""
    import numpy as np
    import tensorflow as tf

    path = Path(name_or_dir)
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
        pre, default_size = cfg["preprocessing"], cfg["input_size"]
    else:
        variant, _ = catalog.get_variant(str(name_or_dir))
        pre, default_size = variant.preprocessing, variant.input_size
    size = size or default_size
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ZooError(f"images must be HWC or NHWC, got shape {x.shape}")
    x = x.astype(np.float32) / (255.0 if np.asarray(images).dtype == np.uint8 else 1.0)
    h, w = x.shape[1:3]
    scale = size / pre["crop_pct"] / min(h, w)
    rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
    method = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}[pre["interpolation"]]
    x = tf.image.resize(x, (rh, rw), method=method, antialias=True).numpy()
    top, left = (rh - size) // 2, (rw - size) // 2
    x = x[:, top:top + size, left:left + size]
    return ((x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)) \
        .astype(np.float32)
