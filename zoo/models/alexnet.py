"""AlexNet (torchvision `alexnet.py`, the "one weird trick" variant): five convs, three 3x3/2
max-pools, an adaptive 6x6 average pool and VGG's style of classifier.

Layer names are the targets of recipes/alexnet.yaml; as in VGG, convs are named after their index
in torchvision's `features` Sequential (`features.3` -> `conv3`).
"""
from __future__ import annotations

import keras

from zoo.models.blocks import application, conv2d, flatten_mlp_top, stage_end

# (torch index, filters, kernel, stride, padding); a max-pool follows indices 0, 3 and 10.
CONVS = ((0, 64, 11, 4, 2), (3, 192, 5, 1, 2), (6, 384, 3, 1, 1), (8, 256, 3, 1, 1),
         (10, 256, 3, 1, 1))
POOLED = (0, 3, 10)


@application("alexnet")
def alexnet(inputs, dropout=0.5):
    """AlexNet; a stage ends with each max-pool (`stage1` ... `stage3`, strides 8, 16, 32);
    `include_top=False` returns `stage3`. Inputs of at least 63x63 pixels."""
    x = inputs
    reduction = 1
    for index, filters, kernel, stride, padding in CONVS:
        # conv2d pads symmetrically (explicit ZeroPadding2D) for the stride-4 stem, like torch.
        x = conv2d(x, filters, kernel, stride=stride, padding=padding, use_bias=True,
                   name=f"conv{index}")
        x = keras.layers.ReLU(name=f"act{index + 1}")(x)
        reduction *= stride
        if index in POOLED:
            # 3x3/2 without padding or ceil_mode: Keras "valid" floors exactly like torch.
            x = keras.layers.MaxPooling2D(3, 2, padding="valid", name=f"pool{index + 2}")(x)
            reduction *= 2
            x = stage_end(x, f"stage{POOLED.index(index) + 1}", reduction)
    return x, flatten_mlp_top(6, 4096, dropout, dropout_first=True)
