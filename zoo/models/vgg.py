"""VGG (torchvision `vgg.py`): 3x3 conv stacks with optional BatchNorm, 2x2 max-pools, an adaptive
7x7 average pool and a three-layer classifier over the flattened features.

Layer names are the targets of recipes/vgg.yaml. Convs and BatchNorms are named after their index
in torchvision's `features` Sequential (`features.3` -> `conv3`, `features.4` -> `bn4`): that
index depends on the configuration and on `batch_norm`, and a mapping template cannot compute a
stage/block number from it, so the index itself is the stable name.
"""
from __future__ import annotations

import keras

from zoo.layers.adaptive_pooling import AdaptiveAvgPool2D
from zoo.models.common import batchnorm, conv2d, finish, input_layer, load_weights

WIDTHS = (64, 128, 256, 512, 512)


def classifier_head(x, *, pool_size, hidden, dropout, dropout_first, classes,
                    classifier_activation):
    """torchvision's VGG/AlexNet classifier: AdaptiveAvgPool2d -> flatten -> 3 Linear layers.

    Keras flattens NHWC features in (H, W, C) order where torch flattens NCHW in (C, H, W): the
    first Dense kernel must be converted with `linear_after_flatten`, not `linear`.
    AlexNet puts each Dropout before its Linear, VGG after the ReLU (`dropout_first`); dropout
    is the identity at inference, so only training differs.
    """
    x = AdaptiveAvgPool2D(pool_size, name="avgpool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        if dropout_first:
            x = keras.layers.Dropout(dropout, name=f"drop{i}")(x)
        x = keras.layers.Dense(hidden, name=f"fc{i}")(x)
        x = keras.layers.ReLU(name=f"fc{i}_act")(x)
        if not dropout_first:
            x = keras.layers.Dropout(dropout, name=f"drop{i}")(x)
    return keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)


def vgg(depths, batch_norm=False, dropout=0.5, *, include_top=True, weights=None,
        input_shape=None, pooling=None, classes=1000, classifier_activation=None,
        features_only=False, name="vgg"):
    """VGG-11/13/16/19 (`depths` = convs per stage, e.g. [1, 1, 2, 2, 2] for VGG-11).

    A stage is its convs and the 2x2 max-pool that ends it (`stage1` ... `stage5`, strides 2 to
    32), as keras.applications' `block<i>_pool`; `include_top=False` returns `stage5`.
    """
    if len(depths) != len(WIDTHS):
        raise ValueError(f"depths must give the convs of the {len(WIDTHS)} stages, got {depths!r}")
    inputs = input_layer(input_shape)
    x = inputs
    index = 0   # position in torchvision's `features` Sequential
    stages = {}
    for s, (depth, width) in enumerate(zip(depths, WIDTHS), start=1):
        for _ in range(depth):
            x = conv2d(x, width, 3, use_bias=True, name=f"conv{index}")
            index += 1
            if batch_norm:
                x = batchnorm(x, name=f"bn{index}")
                index += 1
            x = keras.layers.ReLU(name=f"act{index}")(x)
            index += 1
        # 2x2/2 without padding floors odd sizes exactly like torch's MaxPool2d(2, 2).
        x = keras.layers.MaxPooling2D(2, 2, padding="valid", name=f"pool{index}")(x)
        index += 1
        x = keras.layers.Identity(name=f"stage{s}")(x)
        stages[f"stage{s}"] = x
    if include_top and not features_only:
        x = classifier_head(x, pool_size=7, hidden=4096, dropout=dropout, dropout_first=False,
                            classes=classes, classifier_activation=classifier_activation)
        pooling = None
    model = finish(inputs, x, include_top=False, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, feature_layers=stages,
                   features_only=features_only, name=name)
    return load_weights(model, weights)
