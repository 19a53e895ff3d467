"""Pre-activation ResNet v2 (timm `resnetv2.py`): BiT (weight-standardised convs + GroupNorm(32),
"fixed" stem padding) and the BatchNorm variants (`resnetv2_50`). Layer names are the targets of
recipes/resnetv2.yaml.

What differs from ResNet v1 (zoo/models/resnet.py) and decides parity:

* Pre-activation: every block starts with norm + ReLU (timm's fused `GroupNormAct` /
  `BatchNormAct2d`); the projection shortcut of a stage's first block reads that *activated*
  input, the identity shortcut of the other blocks the raw one. The stem has no norm, a final
  norm + ReLU follows the last stage.
* BiT convs are `StdConv2d` (kernel standardised per output filter at each call, eps 1e-8):
  zoo.layers.StdConv2D, whose raw `kernel` takes the torch weight with the plain conv2d transform.
* Stem pooling: BiT ("fixed") pads the raw conv output with *zeros* (`nn.ConstantPad2d(1, 0.)`)
  and max-pools without padding; `resnetv2_50` max-pools with padding 1, i.e. -inf. The stem
  output is not rectified in either, so the two are different functions and each is reproduced.
* The classifier is a 1x1 Conv2d on the pooled map (`ClassifierHead(use_conv=True)`), so the
  Keras head is a 1x1 Conv2D + Flatten: its kernel has the torch weight's rank (conv2d transform).
"""
from __future__ import annotations

import keras

from zoo.layers import TorchMaxPool2D
from zoo.layers.std_conv import StdConv2D
from zoo.models.common import batchnorm, finish, input_layer, load_weights, make_divisible

STAGE_CHANNELS = (256, 512, 1024, 2048)


def _conv(x, filters, kernel, stride, ctx, name):
    """`nn.Conv2d` / `StdConv2d` with timm's symmetric padding ((stride - 1 + (k - 1)) // 2)."""
    pad = ((stride - 1) + (kernel - 1)) // 2
    mode = "same" if stride == 1 and kernel % 2 == 1 else "valid"
    if mode == "valid" and pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    if ctx["weight_std"]:
        return StdConv2D(filters, kernel, strides=stride, padding=mode, use_bias=False,
                         eps=ctx["std_eps"], name=name)(x)
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding=mode, use_bias=False,
                               name=name)(x)


def _norm_act(x, ctx, name):
    if ctx["norm"] == "group":
        x = keras.layers.GroupNormalization(groups=ctx["gn_groups"], axis=-1,
                                            epsilon=ctx["norm_eps"], name=name)(x)
    else:
        x = batchnorm(x, eps=ctx["norm_eps"], name=name)
    return keras.layers.ReLU(name=f"{name}_act")(x)


def _preact_bottleneck(x, out_ch, stride, project, ctx, name):
    mid = make_divisible(out_ch * 0.25)
    preact = _norm_act(x, ctx, f"{name}_norm1")
    shortcut = _conv(preact, out_ch, 1, stride, ctx, f"{name}_down_conv") if project else x
    y = _conv(preact, mid, 1, 1, ctx, f"{name}_conv1")
    y = _conv(_norm_act(y, ctx, f"{name}_norm2"), mid, 3, stride, ctx, f"{name}_conv2")
    y = _conv(_norm_act(y, ctx, f"{name}_norm3"), out_ch, 1, 1, ctx, f"{name}_conv3")
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def resnetv2(depths, width_factor=1, stem_type="fixed", weight_std=True, std_eps=1e-8,
             norm="group", norm_eps=1e-5, gn_groups=32, *, include_top=True, weights=None,
             input_shape=None, pooling=None, classes=1000, classifier_activation=None,
             features_only=False, name="resnetv2"):
    """Pre-activation ResNet v2 (bottleneck blocks, stride on the 3x3 conv), NHWC input
    normalised like the PyTorch source.

    stem_type: "fixed" (BiT: zero pad 1 + 3x3/2 max-pool) or "" (max-pool with -inf padding 1).
    weight_std: StdConv2D (BiT) or plain Conv2D; norm: "group" (GroupNorm, gn_groups) or "batch".
    Returns logits by default; `features_only=True` returns `stage1` ... `stage4`.
    """
    if stem_type not in ("fixed", ""):
        raise ValueError(f"stem_type must be 'fixed' or '', got {stem_type!r}")
    if norm not in ("group", "batch"):
        raise ValueError(f"norm must be 'group' or 'batch', got {norm!r}")
    ctx = dict(weight_std=bool(weight_std), std_eps=float(std_eps), norm=norm,
               norm_eps=float(norm_eps), gn_groups=int(gn_groups))
    inputs = input_layer(input_shape)
    x = _conv(inputs, make_divisible(64 * width_factor), 7, 2, ctx, "stem_conv")
    if stem_type == "fixed":
        # timm's 'fixed' SAME approximation: a zero pad, even though the conv output is signed
        x = keras.layers.ZeroPadding2D(1, name="stem_pad")(x)
        x = keras.layers.MaxPooling2D(3, 2, padding="valid", name="stem_pool")(x)
    else:
        x = TorchMaxPool2D(3, 2, padding=1, name="stem_pool")(x)

    stages = {}
    for s, depth in enumerate(depths, start=1):
        out_ch = make_divisible(STAGE_CHANNELS[s - 1] * width_factor)
        for b in range(depth):
            stride = 2 if (b == 0 and s > 1) else 1
            # timm gives every stage's first block a projection, even at stride 1 (stage 1)
            x = _preact_bottleneck(x, out_ch, stride, b == 0, ctx, f"stage{s}_block{b}")
        x = keras.layers.Identity(name=f"stage{s}")(x)
        stages[f"stage{s}"] = x
    x = _norm_act(x, ctx, "final_norm")
    if include_top and not features_only:
        x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="avg_pool")(x)
        x = keras.layers.Conv2D(classes, 1, use_bias=True, activation=classifier_activation,
                                name="predictions")(x)
        x = keras.layers.Flatten(name="predictions_flatten")(x)
        model = keras.Model(inputs, x, name=name)
    else:
        model = finish(inputs, x, include_top=False, pooling=pooling, classes=classes,
                       classifier_activation=classifier_activation, feature_layers=stages,
                       features_only=features_only, name=name)
    return load_weights(model, weights)
