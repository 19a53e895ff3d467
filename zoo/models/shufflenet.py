"""ShuffleNetV2 (torchvision `shufflenetv2.py`). Target of recipes/shufflenet_v2.yaml.

Keras stage1 is the stem (conv1 + max-pool) so that stage2-4 carry torchvision's own stage
numbers; conv5 is the head conv. Blocks follow torchvision's InvertedResidual: stride 2 runs
branch1 (dw 3x3 s2, BN, 1x1, BN, ReLU) and branch2 (1x1, BN, ReLU, dw 3x3, BN, 1x1, BN, ReLU) on
the whole input; stride 1 splits the channels in two halves, keeps the first and runs branch2 on
the second. Both concatenate and shuffle the channels (2 groups). torchvision writes the split and
the shuffle for NCHW (`chunk(2, dim=1)`, `view(b, 2, c/2, h, w).transpose(1, 2)`); here they are
the channel-last layers zoo.layers.shuffle.ChannelSplit / ChannelShuffle.
"""
from __future__ import annotations

import keras

from zoo.layers import TorchMaxPool2D
from zoo.layers.shuffle import ChannelShuffle, ChannelSplit
from zoo.models.common import batchnorm, conv2d, finish, input_layer, load_weights
from zoo.models.mobilenet import depthwise

_ARCHS = {   # width multiplier -> (stem, stage2, stage3, stage4, head) channels
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


def _branch1(x, out_ch, name):
    x = depthwise(x, 3, 2, f"{name}_conv_dw")
    x = batchnorm(x, name=f"{name}_bn1")
    x = batchnorm(conv2d(x, out_ch, 1, name=f"{name}_conv_pw"), name=f"{name}_bn2")
    return keras.layers.ReLU(name=f"{name}_act")(x)


def _branch2(x, out_ch, stride, name):
    x = batchnorm(conv2d(x, out_ch, 1, name=f"{name}_conv_pw"), name=f"{name}_bn1")
    x = keras.layers.ReLU(name=f"{name}_act1")(x)
    x = batchnorm(depthwise(x, 3, stride, f"{name}_conv_dw"), name=f"{name}_bn2")
    x = batchnorm(conv2d(x, out_ch, 1, name=f"{name}_conv_pwl"), name=f"{name}_bn3")
    return keras.layers.ReLU(name=f"{name}_act3")(x)


def _block(x, out_ch, stride, name):
    half = out_ch // 2
    if stride == 1:
        keep, x2 = ChannelSplit(2, name=f"{name}_split")(x)
        parts = [keep, _branch2(x2, half, 1, f"{name}_b2")]
    else:
        parts = [_branch1(x, half, f"{name}_b1"), _branch2(x, half, stride, f"{name}_b2")]
    x = keras.layers.Concatenate(name=f"{name}_concat")(parts)
    return ChannelShuffle(2, name=f"{name}_shuffle")(x)


def shufflenet_v2(width_multiplier=1.0, depths=(4, 8, 4), *, include_top=True, weights=None,
                  input_shape=None, pooling=None, classes=1000, classifier_activation=None,
                  features_only=False, name=None):
    """ShuffleNetV2 (x0.5 / x1.0 / x1.5 / x2.0), NHWC input normalised like torchvision; logits.

    `include_top=False` ends after conv5. `features_only=True` returns stage1 (stem, stride 4)
    and stage2-4.
    """
    if width_multiplier not in _ARCHS:
        raise ValueError(f"width_multiplier must be one of {sorted(_ARCHS)}, got {width_multiplier!r}")
    stem, *widths, head = _ARCHS[width_multiplier]
    inputs = input_layer(input_shape)
    x = conv2d(inputs, stem, 3, stride=2, name="stem_conv")
    x = keras.layers.ReLU(name="stem_act")(batchnorm(x, name="stem_bn"))
    x = TorchMaxPool2D(3, 2, padding=1, name="stem_pool")(x)
    stages = {"stage1": keras.layers.Identity(name="stage1")(x)}
    x = stages["stage1"]
    for s, (out_ch, depth) in enumerate(zip(widths, depths), start=2):
        for b in range(depth):
            x = _block(x, out_ch, 2 if b == 0 else 1, f"stage{s}_block{b}")
        stages[f"stage{s}"] = x = keras.layers.Identity(name=f"stage{s}")(x)
    x = batchnorm(conv2d(x, head, 1, name="head_conv"), name="head_bn")
    x = keras.layers.ReLU(name="head_act")(x)
    model = finish(inputs, x, include_top=include_top, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, feature_layers=stages,
                   features_only=features_only,
                   name=name or f"shufflenet_v2_x{width_multiplier:.1f}".replace(".", "_"))
    return load_weights(model, weights)
