"""MobileNetV2 and MobileNetV3 (timm `efficientnet.py` / `mobilenetv3.py`, torchvision
`mobilenetv2.py` / `mobilenetv3.py`). Targets of recipes/mobilenet_v2.yaml and
recipes/mobilenet_v3.yaml.

timm and torchvision compute the same function for each of these networks, so one Keras graph
serves both; the builder arguments cover what really differs between the two sources:

* BatchNorm: timm uses the torch defaults (eps 1e-5, momentum 0.1); torchvision's MobileNetV3
  uses eps 1e-3, momentum 0.01 (`bn_eps`, `torch_bn_momentum`).
* MobileNetV3 head after the global pool: timm has a 1x1 conv with bias (`conv_head`), torchvision
  a Linear (`classifier.0`). On a 1x1 map these are the same affine map, but their weights have
  different ranks and no transform reshapes one into the other, so `head` picks the Keras layer
  whose variables match the source: Conv2D 1x1 + Flatten ("conv") or Dense ("linear").
* Classifier dropout (identity at inference): torchvision 0.2, timm 0.

Blocks are numbered flat, `block<k>`, like keras.applications' MobileNets and like torchvision's
`features.<k>` (features.0 is the stem), so the torchvision rules are generic; timm's nested
`blocks.<stage>.<index>` needs one rule group per block in the recipes (a template cannot add
offsets). Sub-layers carry timm's names: conv_pw, bn1, conv_dw, bn2, conv_reduce/conv_expand
(squeeze-excite), conv_pwl, bn3 (depthwise-separable first block: conv_dw, bn1, conv_pw, bn2).
The end of each timm stage is marked `stage<i>`.
"""
from __future__ import annotations

import keras

from zoo.models.common import conv2d, finish, input_layer, load_weights, make_divisible

# MobileNetV2 (expansion t, out channels c, repeats n, first stride s): one row per timm stage
_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))

# MobileNetV3 blocks (kernel, expanded channels, out channels, SE, activation, stride), one tuple
# per timm stage; the paper's tables 1 and 2 as torchvision writes them. The last entry is the 1x1
# conv-bn-act stage (timm `cn` block, torchvision's last `features` entry), then the head width.
_V3_ARCHS = {
    "large": dict(
        stem=16,
        stages=(((3, 16, 16, False, "relu", 1),),
                ((3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1)),
                ((5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1),
                 (5, 120, 40, True, "relu", 1)),
                ((3, 240, 80, False, "hard_swish", 2), (3, 200, 80, False, "hard_swish", 1),
                 (3, 184, 80, False, "hard_swish", 1), (3, 184, 80, False, "hard_swish", 1)),
                ((3, 480, 112, True, "hard_swish", 1), (3, 672, 112, True, "hard_swish", 1)),
                ((5, 672, 160, True, "hard_swish", 2), (5, 960, 160, True, "hard_swish", 1),
                 (5, 960, 160, True, "hard_swish", 1))),
        last=960, head=1280),
    "small": dict(
        stem=16,
        stages=(((3, 16, 16, True, "relu", 2),),
                ((3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1)),
                ((5, 96, 40, True, "hard_swish", 2), (5, 240, 40, True, "hard_swish", 1),
                 (5, 240, 40, True, "hard_swish", 1)),
                ((5, 120, 48, True, "hard_swish", 1), (5, 144, 48, True, "hard_swish", 1)),
                ((5, 288, 96, True, "hard_swish", 2), (5, 576, 96, True, "hard_swish", 1),
                 (5, 576, 96, True, "hard_swish", 1))),
        last=576, head=1024),
}

_HEADS = ("conv", "linear")


def batchnorm(x, eps, torch_momentum, name):
    """BatchNorm with torch's eps and momentum (Keras momentum weights the running value, torch's
    the new batch). common.batchnorm fixes torch's default momentum 0.1, which torchvision's
    MobileNetV3 (0.01) and MNASNet (0.0003) do not use."""
    return keras.layers.BatchNormalization(epsilon=eps, momentum=1.0 - torch_momentum,
                                           name=name)(x)


def activation(x, kind, name):
    if kind == "relu":
        return keras.layers.ReLU(name=name)(x)
    if kind == "relu6":
        return keras.layers.ReLU(max_value=6.0, name=name)(x)
    if kind == "hard_swish":
        # Keras 3's hard_silu is x * relu6(x + 3) / 6, torch's Hardswish (Keras 2's differed)
        return keras.layers.Activation("hard_silu", name=name)(x)
    raise ValueError(f"unknown activation {kind!r}")


def depthwise(x, kernel, stride, name):
    """`nn.Conv2d(C, C, k, stride, padding=k // 2, groups=C, bias=False)`: symmetric padding.
    Stride 1 with an odd kernel is Keras "same"; strided, "same" would pad more at the end of an
    even input and shift every output pixel, so the padding is explicit."""
    if stride == 1 and kernel % 2 == 1:
        return keras.layers.DepthwiseConv2D(kernel, padding="same", use_bias=False, name=name)(x)
    x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    return keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="valid", use_bias=False,
                                        name=name)(x)


def _squeeze_excite(x, channels, name):
    # torchvision SqueezeExcitation(C, _make_divisible(C // 4, 8)) and timm SqueezeExcite with
    # rd = make_divisible(C * 0.25, 8) agree because every expanded width is a multiple of 4;
    # both: mean -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> hard-sigmoid gate.
    if channels % 4:
        raise ValueError(f"squeeze-excite on {channels} channels: timm and torchvision round "
                         "the reduced width differently")
    rd = make_divisible(channels // 4, 8)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    s = keras.layers.Conv2D(rd, 1, use_bias=True, name=f"{name}_conv_reduce")(s)
    s = keras.layers.ReLU(name=f"{name}_se_act")(s)
    s = keras.layers.Conv2D(channels, 1, use_bias=True, name=f"{name}_conv_expand")(s)
    # Keras 3's hard_sigmoid is relu6(x + 3) / 6 like torch's Hardsigmoid (Keras 2: 0.2x + 0.5)
    s = keras.layers.Activation("hard_sigmoid", name=f"{name}_se_gate")(s)
    return keras.layers.Multiply(name=f"{name}_se_scale")([x, s])


def inverted_residual(x, in_ch, kernel, mid_ch, out_ch, se, act, stride, bn, name):
    """Expansion (skipped when mid == in: timm's depthwise-separable block) -> depthwise ->
    [squeeze-excite] -> linear projection, residual when the shape is kept."""
    shortcut = x
    if mid_ch != in_ch:
        x = conv2d(x, mid_ch, 1, name=f"{name}_conv_pw")
        x = activation(bn(x, f"{name}_bn1"), act, f"{name}_act1")
        dw_bn, proj_conv, proj_bn = f"{name}_bn2", f"{name}_conv_pwl", f"{name}_bn3"
    else:
        dw_bn, proj_conv, proj_bn = f"{name}_bn1", f"{name}_conv_pw", f"{name}_bn2"
    x = depthwise(x, kernel, stride, f"{name}_conv_dw")
    x = activation(bn(x, dw_bn), act, f"{name}_act_dw")
    if se:
        x = _squeeze_excite(x, mid_ch, name)
    x = bn(conv2d(x, out_ch, 1, name=proj_conv), proj_bn)
    if stride == 1 and in_ch == out_ch:
        x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return x


def classifier_head(inputs, x, stages, dropout, *, include_top, pooling, classes,
                    classifier_activation, features_only, name, pre_logits=None,
                    pool_keepdims=False):
    """finish() with the classifier dropout and, for MobileNetV3, a pre-logits function of the
    pooled features (`pool_keepdims` when it starts with a 1x1 conv)."""
    if include_top and not features_only:
        x = keras.layers.GlobalAveragePooling2D(keepdims=pool_keepdims, name="avg_pool")(x)
        if pre_logits is not None:
            x = pre_logits(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name="head_drop")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
        return keras.Model(inputs, x, name=name)
    return finish(inputs, x, include_top=False, pooling=pooling, classes=classes,
                  classifier_activation=classifier_activation, feature_layers=stages,
                  features_only=features_only, name=name)


def mobilenet_v2(bn_eps=1e-5, torch_bn_momentum=0.1, dropout=0.2, *, include_top=True,
                 weights=None, input_shape=None, pooling=None, classes=1000,
                 classifier_activation=None, features_only=False, name="mobilenet_v2"):
    """MobileNetV2 1.0 (ReLU6), NHWC input normalised like the PyTorch source; logits out.

    `include_top=False` ends after the 1x1 head conv (1280 channels), like keras.applications and
    timm's forward_features. `features_only=True` returns the 7 stage outputs.
    """
    def bn(x, n):
        return batchnorm(x, bn_eps, torch_bn_momentum, n)

    inputs = input_layer(input_shape)
    x = conv2d(inputs, 32, 3, stride=2, name="stem_conv")
    x = activation(bn(x, "stem_bn"), "relu6", "stem_act")
    in_ch, k, stages = 32, 1, {}
    for s, (t, c, n, stride) in enumerate(_V2_STAGES, start=1):
        for i in range(n):
            # hidden width: torchvision int(round(in * t)), timm make_divisible(in * t, 8); every
            # in * t here is a multiple of 8, where the two agree
            x = inverted_residual(x, in_ch, 3, int(round(in_ch * t)), c, False, "relu6",
                                  stride if i == 0 else 1, bn, f"block{k}")
            in_ch, k = c, k + 1
        stages[f"stage{s}"] = x = keras.layers.Identity(name=f"stage{s}")(x)
    x = conv2d(x, 1280, 1, name="head_conv")
    x = activation(bn(x, "head_bn"), "relu6", "head_act")
    model = classifier_head(inputs, x, stages, dropout, include_top=include_top, pooling=pooling,
                            classes=classes, classifier_activation=classifier_activation,
                            features_only=features_only, name=name)
    return load_weights(model, weights)


def mobilenet_v3(arch="large", head="conv", bn_eps=1e-5, torch_bn_momentum=0.1, dropout=0.0, *,
                 include_top=True, weights=None, input_shape=None, pooling=None, classes=1000,
                 classifier_activation=None, features_only=False, name=None):
    """MobileNetV3 large/small 1.0 (hard-swish, squeeze-excite with hard-sigmoid gate).

    head: "conv" (timm: pool -> 1x1 conv with bias -> hard-swish -> flatten) or "linear"
    (torchvision: pool -> Linear -> hard-swish); the same function, see the module docstring.
    `include_top=False` ends after the last 1x1 conv stage (before the pool), like timm's
    forward_features. `features_only=True` returns the stage outputs (7 large, 6 small).
    """
    if arch not in _V3_ARCHS:
        raise ValueError(f"arch must be one of {sorted(_V3_ARCHS)}, got {arch!r}")
    if head not in _HEADS:
        raise ValueError(f"head must be one of {_HEADS}, got {head!r}")
    spec = _V3_ARCHS[arch]

    def bn(x, n):
        return batchnorm(x, bn_eps, torch_bn_momentum, n)

    inputs = input_layer(input_shape)
    x = conv2d(inputs, spec["stem"], 3, stride=2, name="stem_conv")
    x = activation(bn(x, "stem_bn"), "hard_swish", "stem_act")
    in_ch, k, stages = spec["stem"], 1, {}
    for s, blocks in enumerate(spec["stages"], start=1):
        for kernel, mid, out, se, act, stride in blocks:
            x = inverted_residual(x, in_ch, kernel, mid, out, se, act, stride, bn, f"block{k}")
            in_ch, k = out, k + 1
        stages[f"stage{s}"] = x = keras.layers.Identity(name=f"stage{s}")(x)
    # 1x1 conv-bn-act: a stage of its own in timm (blocks.<last>), features.<k> in torchvision
    x = conv2d(x, spec["last"], 1, name=f"block{k}_conv")
    x = activation(bn(x, f"block{k}_bn1"), "hard_swish", f"block{k}_act1")
    s = len(spec["stages"]) + 1
    stages[f"stage{s}"] = x = keras.layers.Identity(name=f"stage{s}")(x)

    def pre_logits(y):
        if head == "conv":
            y = keras.layers.Conv2D(spec["head"], 1, use_bias=True, name="head_conv")(y)
            y = activation(y, "hard_swish", "head_act")
            return keras.layers.Flatten(name="head_flatten")(y)
        y = keras.layers.Dense(spec["head"], name="head_fc")(y)
        return activation(y, "hard_swish", "head_act")

    model = classifier_head(inputs, x, stages, dropout, include_top=include_top, pooling=pooling,
                            classes=classes, classifier_activation=classifier_activation,
                            features_only=features_only, name=name or f"mobilenet_v3_{arch}",
                            pre_logits=pre_logits, pool_keepdims=head == "conv")
    return load_weights(model, weights)
