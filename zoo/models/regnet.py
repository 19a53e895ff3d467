"""RegNet X/Y from timm `regnet.py` and torchvision `regnet.py`. Targets of recipes/regnet.yaml.

Both sources build the same network: a 3x3 stride-2 stem, four stages of bottleneck blocks with
bottleneck ratio 1 (1x1 -> grouped 3x3, stride on the 3x3 -> [SE] -> 1x1, residual, ReLU) and a
linear classifier. The per-stage widths/depths are passed explicitly (the values timm's
`generate_regnet` + `adjust_widths_groups_comp` and torchvision's `BlockParams` produce; the
recipe comment shows them) instead of re-deriving them from (w0, wa, wm, depth): a list is
reviewable against the printed torch model, a float formula is not.

Layer names: `stem_conv/bn`, `stage<s>_block<b>_{conv1,bn1,conv2,bn2,se_fc1,se_fc2,conv3,bn3,
down_conv,down_bn}`, `predictions`. Block numbering follows the source (`first_block_index`):
timm numbers blocks from 1 (`s1.b1`, as pycls does), torchvision from 0 (`block1-0`); a mapping
template can copy an index but not add one to it, so the Keras names carry the source's own index.
"""
from __future__ import annotations

import keras

from zoo.models.common import batchnorm, conv2d, finish, input_layer, load_weights


def _squeeze_excite(x, channels, rd, name):
    # timm SEModule / torchvision SqueezeExcitation: mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    s = keras.layers.Conv2D(rd, 1, use_bias=True, name=f"{name}_fc1")(s)
    s = keras.layers.ReLU(name=f"{name}_act")(s)
    s = keras.layers.Conv2D(channels, 1, use_bias=True, activation="sigmoid", name=f"{name}_fc2")(s)
    return keras.layers.Multiply(name=f"{name}_gate")([x, s])


def _block(x, in_ch, out_ch, stride, group_width, se_ratio, bn_eps, name):
    if out_ch % group_width:
        raise ValueError(f"{name}: width {out_ch} is not a multiple of group width {group_width}")
    shortcut = x
    if in_ch != out_ch or stride != 1:
        shortcut = conv2d(x, out_ch, 1, stride=stride, name=f"{name}_down_conv")
        shortcut = batchnorm(shortcut, eps=bn_eps, name=f"{name}_down_bn")
    y = conv2d(x, out_ch, 1, name=f"{name}_conv1")
    y = keras.layers.ReLU(name=f"{name}_act1")(batchnorm(y, eps=bn_eps, name=f"{name}_bn1"))
    y = conv2d(y, out_ch, 3, stride=stride, groups=out_ch // group_width, name=f"{name}_conv2")
    y = keras.layers.ReLU(name=f"{name}_act2")(batchnorm(y, eps=bn_eps, name=f"{name}_bn2"))
    if se_ratio:
        # Both sources size the SE bottleneck from the *block input* width, not the bottleneck
        # width it gates: int(round(in_ch * se_ratio)) (timm Bottleneck, torchvision
        # BottleneckTransform). They differ in the first block of every stage.
        y = _squeeze_excite(y, out_ch, int(round(in_ch * se_ratio)), f"{name}_se")
    y = batchnorm(conv2d(y, out_ch, 1, name=f"{name}_conv3"), eps=bn_eps, name=f"{name}_bn3")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def regnet(widths, depths, group_width, se_ratio=0.0, stem_width=32, bn_eps=1e-5,
           first_block_index=0, *, include_top=True, weights=None, input_shape=None, pooling=None,
           classes=1000, classifier_activation=None, features_only=False, name="regnet"):
    """RegNet X (`se_ratio=0`) or Y (`se_ratio=0.25`), NHWC input normalised like the source.

    widths/depths: per-stage output widths and block counts; group_width: channels per group of
    the 3x3 conv. Returns logits by default; `features_only=True` returns `stage1` ... `stage4`.
    """
    if len(widths) != len(depths):
        raise ValueError(f"widths {widths} and depths {depths} must have the same length")
    inputs = input_layer(input_shape)
    x = conv2d(inputs, stem_width, 3, stride=2, name="stem_conv")
    x = keras.layers.ReLU(name="stem_act")(batchnorm(x, eps=bn_eps, name="stem_bn"))
    in_ch = stem_width
    stages = {}
    for s, (width, depth) in enumerate(zip(widths, depths), start=1):
        for b in range(depth):
            x = _block(x, in_ch, width, 2 if b == 0 else 1, group_width, se_ratio, bn_eps,
                       f"stage{s}_block{b + first_block_index}")
            in_ch = width
        x = keras.layers.Identity(name=f"stage{s}")(x)
        stages[f"stage{s}"] = x
    model = finish(inputs, x, include_top=include_top, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, feature_layers=stages,
                   features_only=features_only, name=name)
    return load_weights(model, weights)
