"""MNASNet-B1 (torchvision `mnasnet.py`; timm's `mnasnet_100` is a different implementation and is
not in the catalogue). Target of recipes/mnasnet.yaml.

Stages: stage1 = the stem's depthwise-separable conv (torchvision layers.0-7), stage2-7 = the six
inverted-residual stacks (layers.8-13); then the 1x1 head conv (layers.14-16). Every BatchNorm has
torchvision's momentum 1 - 0.9997 (Keras momentum 0.9997) and the default eps 1e-5.
"""
from __future__ import annotations

import keras

from zoo.models.common import conv2d, input_layer, load_weights
from zoo.models.mobilenet import activation, batchnorm, classifier_head, depthwise, inverted_residual

TORCH_BN_MOMENTUM = 1 - 0.9997

# (out channels, kernel, first stride, expansion, repeats) per stack, for alpha = 1.0
_STACKS = ((24, 3, 2, 3, 3), (40, 5, 2, 3, 3), (80, 5, 2, 6, 3), (96, 3, 1, 6, 2),
           (192, 5, 2, 6, 4), (320, 3, 1, 6, 1))


def mnasnet(dropout=0.2, *, include_top=True, weights=None, input_shape=None, pooling=None,
            classes=1000, classifier_activation=None, features_only=False, name="mnasnet1_0"):
    """MNASNet 1.0 (ReLU, no squeeze-excite), NHWC input normalised like torchvision; logits out.

    `include_top=False` ends after the 1x1 head conv (1280 channels). `features_only=True`
    returns the 7 stage outputs.
    """
    def bn(x, n):
        return batchnorm(x, 1e-5, TORCH_BN_MOMENTUM, n)

    inputs = input_layer(input_shape)
    x = conv2d(inputs, 32, 3, stride=2, name="stem_conv")
    x = activation(bn(x, "stem_bn"), "relu", "stem_act")
    # depthwise-separable: no activation after the pointwise conv, no residual (32 -> 16)
    x = depthwise(x, 3, 1, "stem_conv_dw")
    x = activation(bn(x, "stem_bn_dw"), "relu", "stem_act_dw")
    x = bn(conv2d(x, 16, 1, name="stem_conv_pw"), "stem_bn_pw")
    stages = {"stage1": keras.layers.Identity(name="stage1")(x)}
    x, in_ch = stages["stage1"], 16
    for s, (out, kernel, stride, exp, repeats) in enumerate(_STACKS, start=2):
        for b in range(repeats):
            x = inverted_residual(x, in_ch, kernel, in_ch * exp, out, False, "relu",
                                  stride if b == 0 else 1, bn, f"stage{s}_block{b}")
            in_ch = out
        stages[f"stage{s}"] = x = keras.layers.Identity(name=f"stage{s}")(x)
    x = conv2d(x, 1280, 1, name="head_conv")
    x = activation(bn(x, "head_bn"), "relu", "head_act")
    model = classifier_head(inputs, x, stages, dropout, include_top=include_top, pooling=pooling,
                            classes=classes, classifier_activation=classifier_activation,
                            features_only=features_only, name=name)
    return load_weights(model, weights)
