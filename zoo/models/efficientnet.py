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

import functools
import math

from zoo.models.blocks import (
    SE_CONV,
    TF_SAME,
    Settings,
    application,
    conv_norm_act,
    inverted_residual,
    make_divisible,
    residual_add,
    squeeze_excite,
    stage_end,
)

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


def _se_channels(in_chs, mid_chs, exp_ratio, se_ratio, rounding):
    if rounding == "torchvision":
        return max(1, in_chs // 4)    # MBConv: squeeze_channels = input_channels // 4
    # timm: SqueezeExcite(mid_chs, rd_ratio=se_ratio / exp_ratio), i.e. a ratio of the block
    # input, rounded with round()
    return round(mid_chs * (se_ratio / exp_ratio))


def _block(x, spec, out_chs, stride, cfg, rounding, drop_path, name):
    """One block of kind ds / ir (blocks.inverted_residual), er or cn (conv-bn-act stacks).
    The activation of each BN is named `<bn>_act`."""
    kind, _repeats, kernel, _stride, exp_ratio, _out, se_ratio = spec
    in_chs = x.shape[-1]
    mid = in_chs if kind in ("ds", "cn") else make_divisible(in_chs * exp_ratio)
    se = None
    if se_ratio:
        se = functools.partial(squeeze_excite, act="silu", naming=SE_CONV, reduced=_se_channels(
            in_chs, mid, 1.0 if kind == "ds" else exp_ratio, se_ratio, rounding))
    if kind in ("ds", "ir"):
        act_names = ("bn1_act", "bn2_act" if kind == "ir" else "bn1_act")
        return inverted_residual(x, mid, out_chs, kernel, stride, prefix=name, cfg=cfg, se=se,
                                 act_names=act_names, drop_path=drop_path)
    if kind == "er":
        y = conv_norm_act(x, mid, kernel, stride, cfg=cfg,
                          names=(f"{name}_conv_exp", f"{name}_bn1", f"{name}_bn1_act"))
        if se is not None:
            y = se(y, prefix=name)
        y = conv_norm_act(y, out_chs, 1, cfg=cfg, names=(f"{name}_conv_pwl", f"{name}_bn2", None))
    elif kind == "cn":
        y = conv_norm_act(x, out_chs, kernel, stride, cfg=cfg,
                          names=(f"{name}_conv", f"{name}_bn1", f"{name}_bn1_act"))
    else:
        raise ValueError(f"unknown block kind {kind!r}")
    if stride != 1 or in_chs != out_chs:   # every kind here keeps its skip when shapes allow it
        return y
    return residual_add(y, x, name, drop_path)


def _round_chs(chs, width_multiplier):
    # timm round_channels and torchvision adjust_channels: the same divisible-by-8 rounding
    return make_divisible(chs * width_multiplier)


def _network(inputs, stem_chs, stages, head_chs, *, width_multiplier, depth_multiplier,
             tf_padding, bn_eps, rounding, drop_path_rate):
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
    cfg = Settings(bn_eps=float(bn_eps), act="silu", padding=TF_SAME if tf_padding else None)
    depths = [int(math.ceil(s[1] * depth_multiplier)) for s in stages]
    stem = _round_chs(stem_chs, width_multiplier)
    x = conv_norm_act(inputs, stem, 3, 2, cfg=cfg, names=("stem_conv", "stem_bn", "stem_bn_act"))
    index, reduction = 0, 2
    for s, (spec, depth) in enumerate(zip(stages, depths), start=1):
        out_chs = _round_chs(spec[5], width_multiplier)
        for b in range(depth):
            stride = spec[3] if b == 0 else 1
            x = _block(x, spec, out_chs, stride, cfg, rounding,
                       drop_path_rate * index / sum(depths), f"stage{s}_block{b}")
            index, reduction = index + 1, reduction * stride
        x = stage_end(x, f"stage{s}", reduction)
    # head_chs None: torchvision B0-B7's last_channel = 4 x the last stage's width; timm scales
    # 1280 by the width multiplier instead (equal for B0-B7, not for every multiplier)
    head = 4 * out_chs if head_chs is None else _round_chs(head_chs, width_multiplier)
    return conv_norm_act(x, head, 1, cfg=cfg, names=("head_conv", "head_bn", "head_bn_act"))


@application("efficientnet")
def efficientnet(inputs, width_multiplier=1.0, depth_multiplier=1.0, tf_padding=False,
                 bn_eps=1e-5, rounding="timm", drop_path_rate=0.0):
    """EfficientNet-B0..B7 (width/depth multipliers), NHWC input normalised like the source.

    tf_padding: TF "SAME" padding everywhere (timm `tf_*` weights); otherwise torch's symmetric
    padding. bn_eps: 1e-3 for `tf_*` weights, 1e-5 for timm's own and torchvision's B0-B7.
    rounding: whose channel arithmetic to reproduce for the SE and head widths ('timm' or
    'torchvision'). drop_path_rate: stochastic depth for training (identity at inference).
    Returns logits; `features_only=True` returns the output of each of the 7 stages.
    """
    return _network(inputs, 32, _B_STAGES, None if rounding == "torchvision" else 1280,
                    width_multiplier=width_multiplier, depth_multiplier=depth_multiplier,
                    tf_padding=tf_padding, bn_eps=bn_eps, rounding=rounding,
                    drop_path_rate=drop_path_rate)


@application("efficientnet_v2")
def efficientnet_v2(inputs, arch="s", width_multiplier=1.0, depth_multiplier=1.0,
                    tf_padding=False, bn_eps=1e-5, rounding="timm", drop_path_rate=0.0):
    """EfficientNetV2 ('s' = the official small model, 'rw_s' = timm's RW variant).

    Same arguments as `efficientnet`; torchvision's V2 uses BN eps 1e-3 and symmetric padding.
    `features_only=True` returns the output of each of the 6 stages.
    """
    if arch not in _V2_ARCHS:
        raise ValueError(f"arch must be one of {sorted(_V2_ARCHS)}, got {arch!r}")
    stem, stages, head = _V2_ARCHS[arch]
    return _network(inputs, stem, stages, head, width_multiplier=width_multiplier,
                    depth_multiplier=depth_multiplier, tf_padding=tf_padding, bn_eps=bn_eps,
                    rounding=rounding, drop_path_rate=drop_path_rate)
