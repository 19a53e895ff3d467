"""Aligned Xception (timm `xception_aligned.py`: xception41/65/71, the DeepLab variant). Layer names
are the targets of recipes/xception.yaml.

timm's `xception41` is the *aligned* Xception, not the original (timm's `legacy_xception`, which
Keras Applications ships): entry flow with three residual modules, a middle flow of identical
728-channel modules, an exit flow, and
* separable convs are depthwise 3x3 -> BatchNorm -> pointwise 1x1 -> BatchNorm (timm
  `SeparableConv2d`): a BN sits *between* the depthwise and the pointwise conv, so Keras'
  SeparableConv2D (no norm in between) cannot hold them; two layers + two BNs are used;
* downsampling is a stride-2 *depthwise* conv (the module's last separable conv) with symmetric
  padding 1, and a stride-2 1x1 conv + BN on the shortcut; no max-pooling;
* in a module that starts with ReLU, the first ReLU is not in-place in torch, so the shortcut
  reads the raw (signed) module input while the separable stack reads its ReLU;
* the last module has no shortcut and ReLUs after both BNs of every separable conv;
* BatchNorm eps is 1e-3 (TF-trained weights), momentum 0.1.

Stages: timm's feature taps (`feature_info`), which sit *inside* each downsampling module, on the
ReLU that feeds its strided separable conv (strides 2, 4, 8, 16), plus the last module's output
(stride 32); `stage<k>` marks the same tensors, so `features_only` matches timm's.
"""
from __future__ import annotations

import keras

from zoo.models.blocks import (
    TF_SAME,
    Settings,
    application,
    cna_names,
    conv2d,
    conv_norm_act,
    depthwise_separable,
    norm,
    residual_add,
    stage_end,
)


def _separable(x, filters, stride, act, cfg, name):
    """timm `SeparableConv2d`: dw 3x3 -> BN (-> ReLU) -> pw 1x1 -> BN (-> ReLU)."""
    names = ("dw", "bn_dw", "act_dw" if act else None, "pw", "bn_pw", "act_pw" if act else None)
    return depthwise_separable(x, filters, 3, stride, prefix=name, cfg=cfg, names=names)


def _module(x, in_ch, out_chs, stride, cfg, name, start_with_relu=True, no_skip=False,
            tap=None):
    """timm `XceptionModule`. `tap`: (name, reduction) of the stage marker on the input of the
    last (strided) separable conv, where timm's feature_info taps."""
    y = x
    for j, ch in enumerate(out_chs, start=1):
        if start_with_relu:
            y = keras.layers.ReLU(name=f"{name}_act{j}")(y)
        if j == 3 and tap:
            y = stage_end(y, *tap)
        y = _separable(y, ch, stride if j == 3 else 1, not start_with_relu, cfg, f"{name}_conv{j}")
    if no_skip:
        return y
    if out_chs[-1] != in_ch or stride != 1:
        # the raw module input: torch's first ReLU is not in-place
        x = norm(conv2d(x, out_chs[-1], 1, stride, cfg=cfg, name=f"{name}_shortcut_conv"),
                 f"{name}_shortcut_bn", cfg)
    return residual_add(y, x, name)


@application("xception")
def xception(inputs, entry_flow=((128, 2), (256, 2), (728, 2)), middle_blocks=8,
             middle_channels=728, exit_channels=((728, 1024, 1024), (1536, 1536, 2048)),
             bn_eps=1e-3, padding="symmetric"):
    """Aligned Xception, NHWC input normalised like the PyTorch source.

    entry_flow: (channels, stride) per entry module; middle_blocks identical modules of
    middle_channels; exit_channels: the strided exit module and the final no-skip module.
    padding: "symmetric" (torch, the default) or "same" (TF) for the strided convs.
    Returns logits by default; `features_only=True` returns `stage1` ... `stage5`.
    """
    if padding not in ("symmetric", "same"):
        raise ValueError(f"padding must be 'symmetric' or 'same', got {padding!r}")
    cfg = Settings(bn_eps=float(bn_eps), padding=TF_SAME if padding == "same" else None)
    x = inputs
    for i, (ch, stride) in enumerate(((32, 2), (64, 1))):
        x = conv_norm_act(x, ch, 3, stride, cfg=cfg, names=cna_names(f"stem{i}"))

    modules = [((ch,) * 3, s) for ch, s in entry_flow]
    modules += [((middle_channels,) * 3, 1)] * middle_blocks
    modules += [(tuple(exit_channels[0]), 2)]
    in_ch, reduction, n_stages = 64, 2, 0
    for b, (out_chs, stride) in enumerate(modules):
        tap = None
        if stride > 1:   # the tap sees the module input, before its strided conv
            n_stages += 1
            tap = (f"stage{n_stages}", reduction)
            reduction *= stride
        x = _module(x, in_ch, out_chs, stride, cfg, f"block{b}", tap=tap)
        in_ch = out_chs[-1]
    x = _module(x, in_ch, tuple(exit_channels[1]), 1, cfg, f"block{len(modules)}",
                   start_with_relu=False, no_skip=True)
    return stage_end(x, f"stage{n_stages + 1}", reduction)
