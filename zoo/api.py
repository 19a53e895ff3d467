"""Public Python API. Nothing here imports torch; `convert` imports the conversion side lazily."""
from __future__ import annotations

import fnmatch
import json
import logging
import os
from pathlib import Path

from zoo import catalog
from zoo.constants import FORMAT_FILES, WEIGHTS_FILE
from zoo.errors import ZooError

log = logging.getLogger("zoo")


def list_models(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Catalogue names, one per weight tag (`timm/resnet50.a1_in1k`, `timm/resnet50.tv_in1k`,
    `torchvision/resnet18.IMAGENET1K_V1`, ...; a `python:` recipe's bare name), optionally
    fnmatch-filtered.

    pretrained=True: the names with published weights. With `ZOO_WEIGHTS_URL` set, those of that
    release's index (zoo.hub.load_index: offline, its cached copy); otherwise the names of the
    sources' own weight sets (every tagged name), which `zoo.convert(name, weights="pretrained")`
    converts."""
    if not pretrained:
        return catalog.list_models(pattern)
    if os.environ.get("ZOO_WEIGHTS_URL"):
        from zoo import hub
        names = sorted(hub.load_index()["models"])
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names
    return catalog.list_models(pattern, pretrained=True)


def convert(name, weights="random", num_classes=None, out_dir=None, in_chans=None,
            input_size=None, progress=None, formats=None, inference=None):
    """Convert a catalogue model (needs torch; see zoo.conversion.pipeline.convert). formats: a
    comma list or sequence out of zoo.constants.FORMATS (default `weights.h5`)."""
    from zoo.conversion.pipeline import convert as _convert
    return _convert(name, weights=weights, num_classes=num_classes, in_chans=in_chans,
                    out_dir=out_dir, input_size=input_size, progress=progress, formats=formats,
                    inference=inference)


def _config_for(path) -> tuple[dict, Path]:
    path = Path(path)
    if path.is_dir():
        cfg, weights = path / "config.json", path / WEIGHTS_FILE
    elif path.name.endswith(".weights.h5"):
        cfg, weights = path.parent / "config.json", path
    else:
        raise ZooError(f"{path}: expected an outputs/<name> folder or a .weights.h5 file")
    if not weights.is_file():
        keras_file = weights.parent / FORMAT_FILES["keras"]
        hint = (f"; the folder has {keras_file.name} (load it with keras.saving.load_model), or "
                "convert again with --formats including weights.h5") if keras_file.is_file() else ""
        raise ZooError(f"{weights} does not exist{hint}")
    if not cfg.is_file():
        raise ZooError(f"{cfg} does not exist (it records the builder and its arguments)")
    return json.loads(cfg.read_text()), weights


def create_model(name, pretrained=False, num_classes=None, include_top=True, input_shape=None,
                 pooling=None, classifier_activation=None, features_only=False, out_indices=None,
                 include_preprocessing=False, token=None, revision=None):
    """A Keras model for catalogue `name`, keras.applications-style. A bare name
    (`timm/resnet50`) means its recipe's default weight tag (`timm/resnet50.a1_in1k`), which is
    logged at INFO on the `zoo` logger; `zoo.resolve_name` gives it without building.

    pretrained: False (random init), a local `.weights.h5` file or `outputs/<name>` folder, or True
    (published weights, downloaded and cached by `zoo.hub`; never a silent random fallback).
    The model takes normalised NHWC input (see `zoo.preprocess`) and returns logits.
    features_only: one output per feature stage (`zoo.models.feature_info`), or only those of
    out_indices (stage positions; negative counts from the end, as in timm).
    include_preprocessing: put the source's eval transform in front (zoo.preprocessing, from the
    weights' config.json or the recipe): the model then takes RGB images of any size with values
    0..255 (uint8 or float), NHWC, and input_shape is that of the model behind it.
    token, revision: for `pretrained=True` from an hf:// release (zoo.hub.fetch): a Hugging Face
    token for private/gated repositories, a branch, tag or commit to pin.
    """
    import keras

    import zoo.layers  # noqa: F401 - custom layers used by builders
    from zoo.models import get_builder

    if pretrained is False and (Path(str(name)) / "config.json").is_file():
        name, pretrained = json.loads((Path(name) / "config.json").read_text())["name"], name
    name = _weight_set(name, pretrained)
    variant = _catalogue_variant(name, pretrained)
    if variant is None or variant.builder.startswith("python:"):
        # a user's model: its own builder, as the recipe or config.json records it
        options = dict(num_classes=num_classes, include_top=include_top, pooling=pooling,
                       classifier_activation=classifier_activation, features_only=features_only,
                       out_indices=out_indices, include_preprocessing=include_preprocessing)
        return _user_model(name, variant, pretrained, input_shape, options)
    kwargs = dict(variant.builder_kwargs)
    weights = None
    if pretrained is True:
        from zoo import hub
        pretrained = hub.fetch(name, token=token, revision=revision)
    if include_preprocessing:
        from zoo.layers.preprocessing import with_preprocessing
        from zoo.preprocessing import eval_transform

        model = create_model(name, pretrained, num_classes, include_top, input_shape, pooling,
                             classifier_activation, features_only, out_indices)
        return with_preprocessing(model, eval_transform(pretrained or name))
    if pretrained:
        config, weights = _config_for(pretrained)
        if catalog.split_name(config.get("name", ""))[0] != variant.name:
            raise ZooError(f"{pretrained} holds a {config.get('name')} model, not {name}")
        kwargs = dict(config["builder_kwargs"])
        kwargs.pop("input_shape", None)
        weight_classes = kwargs.pop("classes", None)   # a detector records none (builder default)
        if include_top and weight_classes is not None and num_classes not in (None, weight_classes):
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
    # No class count given or recorded: the builder's own default (1000 for the ImageNet
    # classifiers, 21 for torchvision's segmentation weights, 91 for the COCO detector).
    if num_classes is not None:
        kwargs["classes"] = num_classes
    if weights is None and not include_top and not features_only:
        return builder(**kwargs, input_shape=input_shape, **headless)
    # Weights: build the full model so that the weights file always matches, then cut the head.
    full = builder(**kwargs, input_shape=input_shape, classifier_activation=classifier_activation)
    if weights is not None:
        full.load_weights(weights)
    if features_only:
        return keras.Model(full.inputs, [full.get_layer(n).output
                                         for n in _stage_layers(full, out_indices)],
                           name=full.name)
    if include_top:
        return full
    model = builder(**kwargs, input_shape=input_shape, **headless)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    return model


def _weight_set(name, pretrained):
    """A bare catalogue name becomes its default tag, logged on the `zoo` logger (INFO) so that
    the weight set is never a guess (with pretrained=True it is the release entry fetched); a tag
    the recipe does not declare is refused. A converted folder says itself which weights it holds
    (config.json), so its name is taken as given (any tag the source has converts)."""
    if pretrained not in (False, None, True):
        return name
    full = catalog.resolve_name(name)
    if full != name:
        log.info("%s resolves to %s (the default weight tag of its recipe)", name, full)
    return full


def _catalogue_variant(name, pretrained):
    """The recipe variant of `name`, or None for a model that is not in this catalogue but whose
    converted folder (`pretrained`) records how to build it."""
    from zoo.errors import UnknownModelError

    try:
        return catalog.get_variant(name)[0]
    except UnknownModelError:
        if pretrained in (False, None, True):
            raise
        return None


_DEFAULTS = dict(num_classes=None, include_top=True, pooling=None, classifier_activation=None,
                 features_only=False, out_indices=None, include_preprocessing=False)


def _user_model(name, variant, pretrained, input_shape, options):
    """A model with its own (`python:`) Keras builder, built as it was converted: the builder and
    its kwargs from config.json (or the recipe, without weights). The keras.applications options
    are for the catalogue's builders, which all take them; a user's builder is called as is."""
    from zoo.models import build, builder_kwargs

    changed = sorted(k for k, v in options.items() if v != _DEFAULTS[k])
    if changed:
        raise ZooError(f"{name}: {changed} apply to the catalogue's builders; {name} has its own "
                       f"Keras builder, which create_model builds as converted")
    if pretrained:
        config, weights = _config_for(pretrained)
        if config.get("name") != name:
            raise ZooError(f"{pretrained} holds a {config.get('name')} model, not {name}")
        kwargs = dict(config["builder_kwargs"])
        if input_shape is not None:
            kwargs = builder_kwargs(config["builder"], kwargs, input_shape=input_shape)
        try:
            model = build(config["builder"], kwargs)
        except ZooError as e:
            raise ZooError(f"{e} (the builder {pretrained}/config.json records; make its module "
                           f"importable, e.g. on PYTHONPATH)") from None
        model.load_weights(weights)
        return model
    return build(variant.builder, builder_kwargs(variant.builder, variant.builder_kwargs,
                                                 input_shape=input_shape))


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
    """The source's eval transform (timm's `create_transform(**resolve_data_config(...))`,
    torchvision's weight `transforms()`) of a converted model (`outputs/<name>` folder) or a
    catalogue name, applied to uint8 images (0..255) or float images ([0, 1]), HWC or NHWC.

    Returns normalised float32 of the same rank (a tf.Tensor), size x size (default: the model's
    input size). Pure TensorFlow: usable in `tf.data.Dataset.map`. Sizes and crop offsets equal
    the source's; pixel values differ by TF's resampling kernels from PIL's (README,
    "Preprocessing"). See zoo.preprocessing.eval_transform for the reusable transform object.
    """
    from zoo.preprocessing import eval_transform

    return eval_transform(name_or_dir, size)(images)


def decode_predictions(logits, name_or_dir, top=5):
    """[(class index, class name, probability), ...] of the `top` classes per image, from the
    class names the source ships, recorded in a converted model's `config.json` (`outputs/<name>`
    folder or its `.weights.h5`) when it was converted from pretrained weights. Probabilities are
    softmax(logits), the models' output (classifier_activation=None)."""
    import numpy as np

    if not Path(name_or_dir).exists():
        raise ZooError(f"{name_or_dir}: class names are read from a converted model's config.json; "
                       f"pass its outputs/<name> folder or .weights.h5 file")
    config, _ = _config_for(name_or_dir)
    names = config.get("class_names")
    if not names:
        raise ZooError(f"{name_or_dir}: no class names are recorded in its config.json (they are "
                       f"recorded when a model is converted from the source's pretrained weights)")
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != len(names):
        raise ZooError(f"logits must have shape (batch, {len(names)}), got {logits.shape}")
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    best = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    return [[(int(i), names[i], float(p[i])) for i in row] for row, p in zip(best, probs)]
