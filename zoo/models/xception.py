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

from zoo.models.common import TORCH_BN_MOMENTUM, finish, input_layer, load_weights


def _pad_mode(x, kernel, stride, ctx, name):
    """Symmetric torch padding (explicit for strided convs), or TF "same" if asked for."""
    if ctx["padding"] == "same" or (stride == 1 and kernel % 2 == 1):
        return x, "same"
    pad = ((stride - 1) + (kernel - 1)) // 2
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return x, "valid"


def _conv(x, filters, kernel, stride, ctx, name):
    x, mode = _pad_mode(x, kernel, stride, ctx, name)
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding=mode, use_bias=False,
                               name=name)(x)


def _bn(x, ctx, name):
    return keras.layers.BatchNormalization(epsilon=ctx["bn_eps"], momentum=TORCH_BN_MOMENTUM,
                                           name=name)(x)


def _separable(x, filters, stride, act, ctx, name):
    """timm `SeparableConv2d`: dw 3x3 -> BN (-> ReLU) -> pw 1x1 -> BN (-> ReLU)."""
    y, mode = _pad_mode(x, 3, stride, ctx, f"{name}_dw")
    y = keras.layers.DepthwiseConv2D(3, strides=stride, padding=mode, use_bias=False,
                                     name=f"{name}_dw")(y)
    y = _bn(y, ctx, f"{name}_bn_dw")
    if act:
        y = keras.layers.ReLU(name=f"{name}_act_dw")(y)
    y = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(y)
    y = _bn(y, ctx, f"{name}_bn_pw")
    if act:
        y = keras.layers.ReLU(name=f"{name}_act_pw")(y)
    return y


def _module(x, in_ch, out_chs, stride, ctx, name, start_with_relu=True, no_skip=False,
            tap=None):
    """timm `XceptionModule`; returns (output, tapped tensor or None). `tap`: name of the
    Identity that marks the input of the last (strided) separable conv as a stage output."""
    y, tapped = x, None
    for j, ch in enumerate(out_chs, start=1):
        if start_with_relu:
            y = keras.layers.ReLU(name=f"{name}_act{j}")(y)
        if j == 3 and tap:
            y = tapped = keras.layers.Identity(name=tap)(y)
        y = _separable(y, ch, stride if j == 3 else 1, not start_with_relu, ctx, f"{name}_conv{j}")
    if no_skip:
        return y, tapped
    if out_chs[-1] != in_ch or stride != 1:
        # the raw module input: torch's first ReLU is not in-place
        x = _bn(_conv(x, out_chs[-1], 1, stride, ctx, f"{name}_shortcut_conv"), ctx,
                f"{name}_shortcut_bn")
    return keras.layers.Add(name=f"{name}_add")([y, x]), tapped


def xception(entry_flow=((128, 2), (256, 2), (728, 2)), middle_blocks=8, middle_channels=728,
             exit_channels=((728, 1024, 1024), (1536, 1536, 2048)), bn_eps=1e-3,
             padding="symmetric", *, include_top=True, weights=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation=None, features_only=False,
             name="xception"):
    """Aligned Xception, NHWC input normalised like the PyTorch source.

    entry_flow: (channels, stride) per entry module; middle_blocks identical modules of
    middle_channels; exit_channels: the strided exit module and the final no-skip module.
    padding: "symmetric" (torch, the default) or "same" (TF) for the strided convs.
    Returns logits by default; `features_only=True` returns `stage1` ... `stage5`.
    """
    if padding not in ("symmetric", "same"):
        raise ValueError(f"padding must be 'symmetric' or 'same', got {padding!r}")
    ctx = dict(bn_eps=float(bn_eps), padding=padding)
    inputs = input_layer(input_shape)
    x = inputs
    for i, (ch, stride) in enumerate(((32, 2), (64, 1))):
        x = _bn(_conv(x, ch, 3, stride, ctx, f"stem{i}_conv"), ctx, f"stem{i}_bn")
        x = keras.layers.ReLU(name=f"stem{i}_act")(x)

    cfg = [((ch,) * 3, s) for ch, s in entry_flow]
    cfg += [((middle_channels,) * 3, 1)] * middle_blocks
    cfg += [(tuple(exit_channels[0]), 2)]
    stages, in_ch = {}, 64
    for b, (out_chs, stride) in enumerate(cfg):
        tap = f"stage{len(stages) + 1}" if stride > 1 else None
        x, tapped = _module(x, in_ch, out_chs, stride, ctx, f"block{b}", tap=tap)
        if tap:
            stages[tap] = tapped
        in_ch = out_chs[-1]
    x, _ = _module(x, in_ch, tuple(exit_channels[1]), 1, ctx, f"block{len(cfg)}",
                   start_with_relu=False, no_skip=True)
    last = f"stage{len(stages) + 1}"
    x = stages[last] = keras.layers.Identity(name=last)(x)
    model = finish(inputs, x, include_top=include_top, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, feature_layers=stages,
                   features_only=features_only, name=name)
    return load_weights(model, weights)
