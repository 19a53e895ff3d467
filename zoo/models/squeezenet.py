"""SqueezeNet 1.0 / 1.1 (torchvision `squeezenet.py`): Fire modules between ceil-mode max-pools
and a 1x1-conv classifier. Layer names are the targets of recipes/squeezenet.yaml; Fire modules
are named after their index in torchvision's `features` Sequential (`features.3` -> `fire3`),
their convs after torch's attributes (`fire3_squeeze`, `fire3_expand1x1`, `fire3_expand3x3`).
"""
from __future__ import annotations

import keras

from zoo.layers import TorchMaxPool2D
from zoo.models.blocks import application, conv2d, stage_end

# version -> (stem filters, stem kernel, layout of `features` after the stem conv + ReLU:
# "M" a max-pool, (squeeze, expand) a Fire module with expand1x1 = expand3x3 = expand filters)
CONFIGS = {
    "1_0": (96, 7, ["M", (16, 64), (16, 64), (32, 128), "M", (32, 128), (48, 192), (48, 192),
                    (64, 256), "M", (64, 256)]),
    "1_1": (64, 3, ["M", (16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192),
                    (48, 192), (64, 256), (64, 256)]),
}


def fire(x, squeeze, expand, name):
    s = keras.layers.Conv2D(squeeze, 1, name=f"{name}_squeeze")(x)
    s = keras.layers.ReLU(name=f"{name}_squeeze_act")(s)
    e1 = keras.layers.Conv2D(expand, 1, name=f"{name}_expand1x1")(s)
    e1 = keras.layers.ReLU(name=f"{name}_expand1x1_act")(e1)
    e3 = keras.layers.Conv2D(expand, 3, padding="same", name=f"{name}_expand3x3")(s)
    e3 = keras.layers.ReLU(name=f"{name}_expand3x3_act")(e3)
    # torch.cat([expand1x1, expand3x3], dim=1): the 1x1 branch's channels come first.
    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([e1, e3])


def _top(dropout):
    # classifier = [Dropout, Conv2d(512, classes, 1), ReLU, AdaptiveAvgPool2d(1)], flattened
    def top(x, classes, classifier_activation):
        x = keras.layers.Dropout(dropout, name="drop")(x)
        x = keras.layers.Conv2D(classes, 1, name="predictions")(x)
        x = keras.layers.ReLU(name="predictions_act")(x)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if classifier_activation is not None:
            x = keras.layers.Activation(classifier_activation, name="predictions_out")(x)
        return x
    return top


@application("squeezenet")
def squeezenet(inputs, version="1_0", dropout=0.5, ceil_mode=True):
    """SqueezeNet `version` "1_0" or "1_1".

    A stage is a max-pool and the Fire modules after it (`stage1` is the stem conv, strides 2, 4,
    8, 16). `ceil_mode` exists for the pitfall test only: torchvision pools with
    `ceil_mode=True`, which keeps a partial window at the bottom/right of odd sizes.
    """
    if version not in CONFIGS:
        raise ValueError(f"version must be one of {sorted(CONFIGS)}, got {version!r}")
    stem_filters, stem_kernel, layout = CONFIGS[version]
    x = conv2d(inputs, stem_filters, stem_kernel, stride=2, padding=0, use_bias=True,
               name="stem_conv")
    x = keras.layers.ReLU(name="stem_act")(x)
    x = stage_end(x, "stage1", 2)
    s = 1
    for i, item in enumerate(layout):
        index = i + 2   # features.0 and features.1 are the stem conv and its ReLU
        if item == "M":
            x = TorchMaxPool2D(3, 2, ceil_mode=ceil_mode, name=f"pool{index}")(x)
        else:
            x = fire(x, *item, name=f"fire{index}")
        if i + 1 == len(layout) or layout[i + 1] == "M":   # last module before a pool
            s += 1
            x = stage_end(x, f"stage{s}", 2 ** s)
    return x, _top(dropout)
