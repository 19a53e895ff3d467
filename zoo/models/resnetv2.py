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
from zoo.models.blocks import (
    Settings,
    activation,
    application,
    conv2d,
    make_divisible,
    norm,
    residual_add,
    stage_end,
)

STAGE_CHANNELS = (256, 512, 1024, 2048)


def _norm_act(x, cfg, name):
    # timm's fused GroupNormAct / BatchNormAct2d: the ReLU is a separate Keras layer
    return activation(norm(x, name, cfg), "relu", f"{name}_act")


def _preact_bottleneck(x, out_ch, stride, project, cfg, name):
    mid = make_divisible(out_ch * 0.25)
    preact = _norm_act(x, cfg, f"{name}_norm1")
    shortcut = conv2d(preact, out_ch, 1, stride, cfg=cfg, name=f"{name}_down_conv") if project else x
    y = conv2d(preact, mid, 1, cfg=cfg, name=f"{name}_conv1")
    y = conv2d(_norm_act(y, cfg, f"{name}_norm2"), mid, 3, stride, cfg=cfg, name=f"{name}_conv2")
    y = conv2d(_norm_act(y, cfg, f"{name}_norm3"), out_ch, 1, cfg=cfg, name=f"{name}_conv3")
    return residual_add(y, shortcut, name)


def _top(x, classes, classifier_activation):
    # timm ClassifierHead(use_conv=True): the classifier is a 1x1 conv on the pooled map
    x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="avg_pool")(x)
    x = keras.layers.Conv2D(classes, 1, use_bias=True, activation=classifier_activation,
                            name="predictions")(x)
    return keras.layers.Flatten(name="predictions_flatten")(x)


@application("resnetv2")
def resnetv2(inputs, depths, width_factor=1, stem_type="fixed", weight_std=True, std_eps=1e-8,
             norm="group", norm_eps=1e-5, gn_groups=32):
    """Pre-activation ResNet v2 (bottleneck blocks, stride on the 3x3 conv), NHWC input
    normalised like the PyTorch source.

    stem_type: "fixed" (BiT: zero pad 1 + 3x3/2 max-pool) or "" (max-pool with -inf padding 1).
    weight_std: StdConv2D (BiT) or plain Conv2D; norm: "group" (GroupNorm, gn_groups) or "batch".
    Returns logits by default; `features_only=True` returns `stage1` ... `stage4`.
    """
    if stem_type not in ("fixed", ""):
        raise ValueError(f"stem_type must be 'fixed' or '', got {stem_type!r}")
    cfg = Settings(bn_eps=float(norm_eps), norm=norm, gn_groups=int(gn_groups),
                   weight_std_eps=float(std_eps) if weight_std else None)
    x = conv2d(inputs, make_divisible(64 * width_factor), 7, 2, cfg=cfg, name="stem_conv")
    if stem_type == "fixed":
        # timm's 'fixed' SAME approximation: a zero pad, even though the conv output is signed
        x = keras.layers.ZeroPadding2D(1, name="stem_pad")(x)
        x = keras.layers.MaxPooling2D(3, 2, padding="valid", name="stem_pool")(x)
    else:
        x = TorchMaxPool2D(3, 2, padding=1, name="stem_pool")(x)

    for s, depth in enumerate(depths, start=1):
        out_ch = make_divisible(STAGE_CHANNELS[s - 1] * width_factor)
        for b in range(depth):
            stride = 2 if (b == 0 and s > 1) else 1
            # timm gives every stage's first block a projection, even at stride 1 (stage 1)
            x = _preact_bottleneck(x, out_ch, stride, b == 0, cfg, f"stage{s}_block{b}")
        x = stage_end(x, f"stage{s}", 2 ** (s + 1))
    return _norm_act(x, cfg, "final_norm"), _top
