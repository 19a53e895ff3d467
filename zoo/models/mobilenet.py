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
`blocks.<stage>.<index>` is turned into the flat number by a template with a table of each
stage's first block (`{first[g1]+g2}`, docs/recipe-format.md). Sub-layers carry timm's names:
conv_pw, bn1, conv_dw, bn2, conv_reduce/conv_expand
(squeeze-excite), conv_pwl, bn3 (depthwise-separable first block: conv_dw, bn1, conv_pw, bn2).
The end of each timm stage is marked `stage<i>`.
"""
from __future__ import annotations

import functools

import keras

from zoo.models.blocks import (
    SE_CONV_HARD,
    Settings,
    activation,
    application,
    cna_names,
    conv_norm_act,
    inverted_residual,
    make_divisible,
    pooled_top,
    squeeze_excite,
    stage_end,
)

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


def _se(channels):
    # torchvision SqueezeExcitation(C, _make_divisible(C // 4, 8)) and timm SqueezeExcite with
    # rd = make_divisible(C * 0.25, 8) agree because every expanded width is a multiple of 4;
    # both: mean -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> hard-sigmoid gate.
    if channels % 4:
        raise ValueError(f"squeeze-excite on {channels} channels: timm and torchvision round "
                         "the reduced width differently")
    return functools.partial(squeeze_excite, reduced=make_divisible(channels // 4, 8),
                             gate="hard_sigmoid", naming=SE_CONV_HARD)


def _reduce_tail(stages, last, divider):
    """torchvision's `reduced_tail` (MobileNetV3 paper, section 6.3: detection and segmentation
    backbones): the last stage's widths divided by `divider`, except the expansion of its first
    block, which expands the previous stage's output."""
    *head, tail = stages
    tail = tuple((k, mid if i == 0 else mid // divider, out // divider, se, act, stride)
                 for i, (k, mid, out, se, act, stride) in enumerate(tail))
    return (*head, tail), last // divider


def mobilenet_v3_features(inputs, arch="large", bn_eps=1e-5, torch_bn_momentum=0.1,
                          reduced_tail=False, dilated=False):
    """The MobileNetV3 feature extractor (stem, inverted residuals, the last 1x1 conv-bn-act
    stage), with the `stage<i>` markers; shared by the classifier below and the detection
    backbones (zoo/models/detection.py), which tap intermediate layers by name."""
    if arch not in _V3_ARCHS:
        raise ValueError(f"arch must be one of {sorted(_V3_ARCHS)}, got {arch!r}")
    spec = _V3_ARCHS[arch]
    stages, last = _reduce_tail(spec["stages"], spec["last"], 2 if reduced_tail else 1)
    cfg = Settings(bn_eps=bn_eps, bn_momentum=torch_bn_momentum, act="hard_swish")
    x = conv_norm_act(inputs, spec["stem"], 3, 2, cfg=cfg, names=cna_names("stem"))
    k, reduction = 1, 2
    for s, blocks in enumerate(stages, start=1):
        # dilated (torchvision's segmentation backbones): the last stage keeps stride 16, its
        # depthwise convs dilated by 2 instead of its first block striding. That block changes
        # the width in both networks, so it stays without a residual as in torchvision.
        dilation = 2 if dilated and s == len(stages) else 1
        for kernel, mid, out, se, act, stride in blocks:
            stride = 1 if dilation > 1 else stride
            x = inverted_residual(x, mid, out, kernel, stride, cfg=cfg, act=act,
                                  se=_se(mid) if se else None, prefix=f"block{k}",
                                  dilation=dilation)
            k, reduction = k + 1, reduction * stride
        x = stage_end(x, f"stage{s}", reduction)
    # 1x1 conv-bn-act: a stage of its own in timm (blocks.<last>), features.<k> in torchvision
    x = conv_norm_act(x, last, 1, cfg=cfg,
                      names=(f"block{k}_conv", f"block{k}_bn1", f"block{k}_act1"))
    return stage_end(x, f"stage{len(stages) + 1}", reduction)


@application("mobilenet_v2")
def mobilenet_v2(inputs, bn_eps=1e-5, torch_bn_momentum=0.1, dropout=0.2):
    """MobileNetV2 1.0 (ReLU6), NHWC input normalised like the PyTorch source; logits out.

    `include_top=False` ends after the 1x1 head conv (1280 channels), like keras.applications and
    timm's forward_features. `features_only=True` returns the 7 stage outputs.
    """
    cfg = Settings(bn_eps=bn_eps, bn_momentum=torch_bn_momentum, act="relu6")
    x = conv_norm_act(inputs, 32, 3, 2, cfg=cfg, names=cna_names("stem"))
    k, reduction = 1, 2
    for s, (t, c, n, stride) in enumerate(_V2_STAGES, start=1):
        for i in range(n):
            # hidden width: torchvision int(round(in * t)), timm make_divisible(in * t, 8); every
            # in * t here is a multiple of 8, where the two agree
            x = inverted_residual(x, int(round(x.shape[-1] * t)), c, 3, stride if i == 0 else 1,
                                  cfg=cfg, prefix=f"block{k}")
            k += 1
        reduction *= stride
        x = stage_end(x, f"stage{s}", reduction)
    x = conv_norm_act(x, 1280, 1, cfg=cfg, names=cna_names("head"))
    return x, pooled_top(dropout)


@application(lambda arch, **_: f"mobilenet_v3_{arch}")
def mobilenet_v3(inputs, arch="large", head="conv", bn_eps=1e-5, torch_bn_momentum=0.1,
                 dropout=0.0):
    """MobileNetV3 large/small 1.0 (hard-swish, squeeze-excite with hard-sigmoid gate).

    head: "conv" (timm: pool -> 1x1 conv with bias -> hard-swish -> flatten) or "linear"
    (torchvision: pool -> Linear -> hard-swish); the same function, see the module docstring.
    `include_top=False` ends after the last 1x1 conv stage (before the pool), like timm's
    forward_features. `features_only=True` returns the stage outputs (7 large, 6 small).
    """
    if head not in _HEADS:
        raise ValueError(f"head must be one of {_HEADS}, got {head!r}")
    x = mobilenet_v3_features(inputs, arch, bn_eps, torch_bn_momentum)
    head_width = _V3_ARCHS[arch]["head"]

    def pre_logits(y):
        if head == "conv":
            y = keras.layers.Conv2D(head_width, 1, use_bias=True, name="head_conv")(y)
            y = activation(y, "hard_swish", "head_act")
            return keras.layers.Flatten(name="head_flatten")(y)
        y = keras.layers.Dense(head_width, name="head_fc")(y)
        return activation(y, "hard_swish", "head_act")

    return x, pooled_top(dropout, pre_logits, keepdims=head == "conv")
