"""ResNet family (timm `resnet.py` and torchvision `resnet.py`): basic/bottleneck blocks,
ResNeXt groups, wide bottlenecks, the ResNet-D deep stem with average-pool downsampling, and
squeeze-excite (SE-ResNeXt). Layer names are the targets of recipes/resnet.yaml."""
from __future__ import annotations

import keras

from zoo.layers import TorchMaxPool2D
from zoo.models.common import batchnorm, conv2d, finish, input_layer, load_weights, make_divisible


def _squeeze_excite(x, channels, name):
    # timm SEModule: mean -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> sigmoid gate
    rd = make_divisible(channels / 16, 8, round_limit=0.0)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    s = keras.layers.Conv2D(rd, 1, use_bias=True, name=f"{name}_fc1")(s)
    s = keras.layers.ReLU(name=f"{name}_act")(s)
    s = keras.layers.Conv2D(channels, 1, use_bias=True, activation="sigmoid", name=f"{name}_fc2")(s)
    return keras.layers.Multiply(name=f"{name}_gate")([x, s])


def _shortcut(x, out_ch, stride, avg_down, name):
    if avg_down:
        if stride > 1:
            # AvgPool2d(2, s, ceil_mode=True, count_include_pad=False): TF "same" pads only at the
            # end and excludes the pad from the mean, which is exactly that partial last window.
            x = keras.layers.AveragePooling2D(2, stride, padding="same", name=f"{name}_pool")(x)
        x = conv2d(x, out_ch, 1, name=f"{name}_conv")
    else:
        x = conv2d(x, out_ch, 1, stride=stride, name=f"{name}_conv")
    return batchnorm(x, name=f"{name}_bn")


def _block(x, kind, planes, stride, groups, base_width, se, avg_down, downsample, name):
    expansion = 1 if kind == "basic" else 4
    out_ch = planes * expansion
    shortcut = _shortcut(x, out_ch, stride, avg_down, f"{name}_down") if downsample else x
    if kind == "basic":
        y = conv2d(x, planes, 3, stride=stride, name=f"{name}_conv1")
        y = keras.layers.ReLU(name=f"{name}_act1")(batchnorm(y, name=f"{name}_bn1"))
        y = batchnorm(conv2d(y, planes, 3, name=f"{name}_conv2"), name=f"{name}_bn2")
    else:
        width = int(planes * (base_width / 64.0)) * groups
        y = conv2d(x, width, 1, name=f"{name}_conv1")
        y = keras.layers.ReLU(name=f"{name}_act1")(batchnorm(y, name=f"{name}_bn1"))
        y = conv2d(y, width, 3, stride=stride, groups=groups, name=f"{name}_conv2")
        y = keras.layers.ReLU(name=f"{name}_act2")(batchnorm(y, name=f"{name}_bn2"))
        y = batchnorm(conv2d(y, out_ch, 1, name=f"{name}_conv3"), name=f"{name}_bn3")
    if se:
        y = _squeeze_excite(y, out_ch, f"{name}_se")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y), out_ch


def resnet(depths, block="bottleneck", groups=1, width_per_group=64, stem="default",
           stem_width=64, avg_down=False, se=False, *, include_top=True, weights=None,
           input_shape=None, pooling=None, classes=1000, classifier_activation=None,
           features_only=False, name="resnet"):
    """ResNet v1.5 (stride on the 3x3 conv), NHWC input normalised like the PyTorch source.

    Returns logits by default (`classifier_activation=None`), as the PyTorch model does.
    `features_only=True` returns the output of every stage (`stage1` ... `stage4`).
    """
    if block not in ("basic", "bottleneck"):
        raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
    if stem not in ("default", "deep"):
        raise ValueError(f"stem must be 'default' or 'deep', got {stem!r}")
    inputs = input_layer(input_shape)
    x = inputs
    if stem == "deep":
        for i, ch in enumerate((stem_width, stem_width), start=1):
            x = conv2d(x, ch, 3, stride=2 if i == 1 else 1, name=f"stem_conv{i}")
            x = keras.layers.ReLU(name=f"stem_act{i}")(batchnorm(x, name=f"stem_bn{i}"))
        x = conv2d(x, stem_width * 2, 3, name="stem_conv3")
        in_ch = stem_width * 2
    else:
        x = conv2d(x, 64, 7, stride=2, name="stem_conv")
        in_ch = 64
    x = keras.layers.ReLU(name="stem_act")(batchnorm(x, name="stem_bn"))
    x = TorchMaxPool2D(3, 2, padding=1, name="stem_pool")(x)

    stages = {}
    for s, depth in enumerate(depths, start=1):
        planes = 64 * 2 ** (s - 1)
        for b in range(depth):
            stride = 2 if (b == 0 and s > 1) else 1
            downsample = b == 0 and (stride != 1 or in_ch != planes * (1 if block == "basic" else 4))
            x, in_ch = _block(x, block, planes, stride, groups, width_per_group, se, avg_down,
                              downsample, f"stage{s}_block{b}")
        x = keras.layers.Identity(name=f"stage{s}")(x)
        stages[f"stage{s}"] = x
    model = finish(inputs, x, include_top=include_top, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, feature_layers=stages,
                   features_only=features_only, name=name)
    return load_weights(model, weights)
