"""EfficientNet (B0-B3) and EfficientNetV2 (S, RW-S) from timm `efficientnet.py` and torchvision
`efficientnet.py`. Targets of recipes/efficientnet.yaml and recipes/efficientnet_v2.yaml.

Both sources build the same network (MBConv blocks with SiLU and squeeze-excite, fused MBConv for
V2), so one Keras graph serves both; only their channel arithmetic (SE width, head width) and
their padding/BN eps differ, which the builder arguments select. Block sub-layers carry timm's
names (conv_pw, bn1, conv_dw, ...) so the timm mapping rules can be generic over blocks; the
torchvision rules translate its positional `block.<k>` indices into the same names.

Block kinds (timm's block-string codes):
    ds  depthwise-separable: conv_dw, bn1, act, SE, conv_pw, bn2          (B0 stage 1)
    ir  inverted residual (MBConv): conv_pw, bn1, act, conv_dw, bn2, act, SE, conv_pwl, bn3
    er  edge residual (fused MBConv): conv_exp (k x k, strided), bn1, act, [SE], conv_pwl, bn2
    cn  conv-bn-act (fused MBConv with expansion 1): conv, bn1, act
"""
from __future__ import annotations

import math

import keras

from zoo.models.common import batchnorm, conv2d, finish, input_layer, load_weights, make_divisible

#            kind, repeats, kernel, stride, expansion, out channels, SE ratio
_B_STAGES = (("ds", 1, 3, 1, 1, 16, 0.25),
             ("ir", 2, 3, 2, 6, 24, 0.25),
             ("ir", 2, 5, 2, 6, 40, 0.25),
             ("ir", 3, 3, 2, 6, 80, 0.25),
             ("ir", 3, 5, 1, 6, 112, 0.25),
             ("ir", 4, 5, 2, 6, 192, 0.25),
             ("ir", 1, 3, 1, 6, 320, 0.25))

_V2_S_STAGES = (("cn", 2, 3, 1, 1, 24, 0.0),
                ("er", 4, 3, 2, 4, 48, 0.0),
                ("er", 4, 3, 2, 4, 64, 0.0),
                ("ir", 6, 3, 2, 4, 128, 0.25),
                ("ir", 9, 3, 1, 6, 160, 0.25),
                ("ir", 15, 3, 2, 6, 256, 0.25))

# arch -> (stem channels, stages, head channels)
_V2_ARCHS = {
    "s": (24, _V2_S_STAGES, 1280),
    # timm's pre-release "rw" small model: a fused block with expansion 1 (two convs, not one) in
    # stage 1, a wider last stage and head.
    "rw_s": (24, (("er", 2, 3, 1, 1, 24, 0.0),) + _V2_S_STAGES[1:-1]
             + (("ir", 15, 3, 2, 6, 272, 0.25),), 1792),
}

_ROUNDINGS = ("timm", "torchvision")


class _Ctx:
    """Per-model settings shared by every block."""

    def __init__(self, tf_padding, bn_eps, rounding, drop_path_rate, total_blocks):
        if rounding not in _ROUNDINGS:
            raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
        self.tf_padding = bool(tf_padding)
        self.bn_eps = float(bn_eps)
        self.rounding = rounding
        self.drop_path_rate = float(drop_path_rate)
        self.total_blocks = total_blocks


def _conv(x, filters, kernel, stride, ctx, name, use_bias=False):
    if ctx.tf_padding:
        # TF "SAME" (timm Conv2dSame / padding='same'): the odd pixel of the padding goes at the
        # end; weights trained in TF expect exactly this, and Keras "same" is that rule.
        return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same",
                                   use_bias=use_bias, name=name)(x)
    return conv2d(x, filters, kernel, stride=stride, use_bias=use_bias, name=name)


def _dwconv(x, kernel, stride, ctx, name):
    # TF weights: TF "SAME" as in _conv. Torch weights: with stride 1 (odd kernel) "same" is
    # torch's symmetric kernel // 2 padding; strided, "same" would pad more at the end of an even
    # input and shift every output pixel, so pad symmetrically by hand.
    if ctx.tf_padding or stride == 1:
        mode = "same"
    else:
        x = keras.layers.ZeroPadding2D((kernel - 1) // 2, name=f"{name}_pad")(x)
        mode = "valid"
    return keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=mode, use_bias=False,
                                        name=name)(x)


def _bn_act(x, ctx, name, act=True):
    x = batchnorm(x, eps=ctx.bn_eps, name=name)
    return keras.layers.Activation("silu", name=f"{name}_act")(x) if act else x


def _squeeze_excite(x, channels, reduced, name):
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    s = keras.layers.Conv2D(reduced, 1, use_bias=True, name=f"{name}_conv_reduce")(s)
    s = keras.layers.Activation("silu", name=f"{name}_se_act")(s)
    s = keras.layers.Conv2D(channels, 1, use_bias=True, name=f"{name}_conv_expand")(s)
    # a separate sigmoid keeps conv_expand's output comparable with torch's (pre-gate) one
    s = keras.layers.Activation("sigmoid", name=f"{name}_se_sigmoid")(s)
    return keras.layers.Multiply(name=f"{name}_se_gate")([x, s])


def _se_channels(in_chs, mid_chs, exp_ratio, se_ratio, ctx):
    if ctx.rounding == "torchvision":
        return max(1, in_chs // 4)    # MBConv: squeeze_channels = input_channels // 4
    # timm: SqueezeExcite(mid_chs, rd_ratio=se_ratio / exp_ratio), i.e. a ratio of the block
    # input, rounded with round()
    return round(mid_chs * (se_ratio / exp_ratio))


def _block(x, spec, in_chs, out_chs, stride, index, ctx, name):
    kind, _repeats, kernel, _stride, exp_ratio, _out, se_ratio = spec
    shortcut = x
    if kind == "ds":
        mid = in_chs
        y = _bn_act(_dwconv(x, kernel, stride, ctx, f"{name}_conv_dw"), ctx, f"{name}_bn1")
        if se_ratio:
            y = _squeeze_excite(y, mid, _se_channels(in_chs, mid, 1.0, se_ratio, ctx), name)
        y = _bn_act(_conv(y, out_chs, 1, 1, ctx, f"{name}_conv_pw"), ctx, f"{name}_bn2", act=False)
    elif kind == "ir":
        mid = make_divisible(in_chs * exp_ratio)
        y = _bn_act(_conv(x, mid, 1, 1, ctx, f"{name}_conv_pw"), ctx, f"{name}_bn1")
        y = _bn_act(_dwconv(y, kernel, stride, ctx, f"{name}_conv_dw"), ctx, f"{name}_bn2")
        if se_ratio:
            y = _squeeze_excite(y, mid, _se_channels(in_chs, mid, exp_ratio, se_ratio, ctx), name)
        y = _bn_act(_conv(y, out_chs, 1, 1, ctx, f"{name}_conv_pwl"), ctx, f"{name}_bn3", act=False)
    elif kind == "er":
        mid = make_divisible(in_chs * exp_ratio)
        y = _bn_act(_conv(x, mid, kernel, stride, ctx, f"{name}_conv_exp"), ctx, f"{name}_bn1")
        if se_ratio:
            y = _squeeze_excite(y, mid, _se_channels(in_chs, mid, exp_ratio, se_ratio, ctx), name)
        y = _bn_act(_conv(y, out_chs, 1, 1, ctx, f"{name}_conv_pwl"), ctx, f"{name}_bn2", act=False)
    elif kind == "cn":
        y = _bn_act(_conv(x, out_chs, kernel, stride, ctx, f"{name}_conv"), ctx, f"{name}_bn1")
    else:
        raise ValueError(f"unknown block kind {kind!r}")
    if stride != 1 or in_chs != out_chs:   # every kind here keeps its skip when shapes allow it
        return y
    rate = ctx.drop_path_rate * index / ctx.total_blocks
    if rate > 0:
        # Drop path (timm DropPath / torchvision StochasticDepth "row"): drop the whole residual
        # branch per sample and rescale by 1/(1-rate) -- Dropout with a per-sample noise shape.
        # Active only with training=True; inference is the identity, like torch's eval().
        y = keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop_path")(y)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def _round_chs(chs, width_multiplier):
    # timm round_channels and torchvision adjust_channels: the same divisible-by-8 rounding
    return make_divisible(chs * width_multiplier)


def _network(stem_chs, stages, head_chs, *, width_multiplier, depth_multiplier, tf_padding,
             bn_eps, rounding, drop_path_rate, include_top, weights, input_shape, pooling,
             classes, classifier_activation, features_only, name):
    depths = [int(math.ceil(s[1] * depth_multiplier)) for s in stages]
    ctx = _Ctx(tf_padding, bn_eps, rounding, drop_path_rate, sum(depths))
    inputs = input_layer(input_shape)
    stem = _round_chs(stem_chs, width_multiplier)
    x = _bn_act(_conv(inputs, stem, 3, 2, ctx, "stem_conv"), ctx, "stem_bn")
    in_chs, index, feats = stem, 0, {}
    for s, (spec, depth) in enumerate(zip(stages, depths), start=1):
        out_chs = _round_chs(spec[5], width_multiplier)
        for b in range(depth):
            stride = spec[3] if b == 0 else 1
            x = _block(x, spec, in_chs, out_chs, stride, index, ctx, f"stage{s}_block{b}")
            in_chs, index = out_chs, index + 1
        x = keras.layers.Identity(name=f"stage{s}")(x)
        feats[f"stage{s}"] = x
    # head_chs None: torchvision B0-B7's last_channel = 4 x the last stage's width; timm scales
    # 1280 by the width multiplier instead (equal for B0-B7, not for every multiplier)
    head = 4 * in_chs if head_chs is None else _round_chs(head_chs, width_multiplier)
    x = _bn_act(_conv(x, head, 1, 1, ctx, "head_conv"), ctx, "head_bn")
    model = finish(inputs, x, include_top=include_top, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, feature_layers=feats,
                   features_only=features_only, name=name)
    return load_weights(model, weights)


def efficientnet(width_multiplier=1.0, depth_multiplier=1.0, tf_padding=False, bn_eps=1e-5,
                 rounding="timm", drop_path_rate=0.0, *, include_top=True, weights=None,
                 input_shape=None, pooling=None, classes=1000, classifier_activation=None,
                 features_only=False, name="efficientnet"):
    """EfficientNet-B0..B7 (width/depth multipliers), NHWC input normalised like the source.

    tf_padding: TF "SAME" padding everywhere (timm `tf_*` weights); otherwise torch's symmetric
    padding. bn_eps: 1e-3 for `tf_*` weights, 1e-5 for timm's own and torchvision's B0-B7.
    rounding: whose channel arithmetic to reproduce for the SE and head widths ('timm' or
    'torchvision'). drop_path_rate: stochastic depth for training (identity at inference).
    Returns logits; `features_only=True` returns the output of each of the 7 stages.
    """
    return _network(32, _B_STAGES, None if rounding == "torchvision" else 1280,
                    width_multiplier=width_multiplier, depth_multiplier=depth_multiplier,
                    tf_padding=tf_padding, bn_eps=bn_eps, rounding=rounding,
                    drop_path_rate=drop_path_rate, include_top=include_top, weights=weights,
                    input_shape=input_shape, pooling=pooling, classes=classes,
                    classifier_activation=classifier_activation, features_only=features_only,
                    name=name)


def efficientnet_v2(arch="s", width_multiplier=1.0, depth_multiplier=1.0, tf_padding=False,
                    bn_eps=1e-5, rounding="timm", drop_path_rate=0.0, *, include_top=True,
                    weights=None, input_shape=None, pooling=None, classes=1000,
                    classifier_activation=None, features_only=False, name="efficientnet_v2"):
    """EfficientNetV2 ('s' = the official small model, 'rw_s' = timm's RW variant).

    Same arguments as `efficientnet`; torchvision's V2 uses BN eps 1e-3 and symmetric padding.
    `features_only=True` returns the output of each of the 6 stages.
    """
    if arch not in _V2_ARCHS:
        raise ValueError(f"arch must be one of {sorted(_V2_ARCHS)}, got {arch!r}")
    stem, stages, head = _V2_ARCHS[arch]
    return _network(stem, stages, head, width_multiplier=width_multiplier,
                    depth_multiplier=depth_multiplier, tf_padding=tf_padding, bn_eps=bn_eps,
                    rounding=rounding, drop_path_rate=drop_path_rate, include_top=include_top,
                    weights=weights, input_shape=input_shape, pooling=pooling, classes=classes,
                    classifier_activation=classifier_activation, features_only=features_only,
                    name=name)
