"""VGG (torchvision `vgg.py`): 3x3 conv stacks with optional BatchNorm, 2x2 max-pools, an adaptive
7x7 average pool and a three-layer classifier over the flattened features.

Layer names are the targets of recipes/vgg.yaml. Convs and BatchNorms are named after their index
in torchvision's `features` Sequential (`features.3` -> `conv3`, `features.4` -> `bn4`): that
index depends on the configuration and on `batch_norm`, and turning it into a stage/block number
would need a table per configuration, so the index itself is the stable name.
"""
from __future__ import annotations

import keras

from zoo.models.blocks import application, conv2d, flatten_mlp_top, norm, stage_end

WIDTHS = (64, 128, 256, 512, 512)


@application("vgg")
def vgg(inputs, depths, batch_norm=False, dropout=0.5):
    """VGG-11/13/16/19 (`depths` = convs per stage, e.g. [1, 1, 2, 2, 2] for VGG-11).

    A stage is its convs and the 2x2 max-pool that ends it (`stage1` ... `stage5`, strides 2 to
    32), as keras.applications' `block<i>_pool`; `include_top=False` returns `stage5`.
    """
    if len(depths) != len(WIDTHS):
        raise ValueError(f"depths must give the convs of the {len(WIDTHS)} stages, got {depths!r}")
    x = inputs
    index = 0   # position in torchvision's `features` Sequential
    for s, (depth, width) in enumerate(zip(depths, WIDTHS), start=1):
        for _ in range(depth):
            x = conv2d(x, width, 3, use_bias=True, name=f"conv{index}")
            index += 1
            if batch_norm:
                x = norm(x, f"bn{index}")
                index += 1
            x = keras.layers.ReLU(name=f"act{index}")(x)
            index += 1
        # 2x2/2 without padding floors odd sizes exactly like torch's MaxPool2d(2, 2).
        x = keras.layers.MaxPooling2D(2, 2, padding="valid", name=f"pool{index}")(x)
        index += 1
        x = stage_end(x, f"stage{s}", 2 ** s)
    return x, flatten_mlp_top(7, 4096, dropout, dropout_first=False)
