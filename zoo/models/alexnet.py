"""AlexNet (torchvision `alexnet.py`, the "one weird trick" variant): five convs, three 3x3/2
max-pools, an adaptive 6x6 average pool and VGG's style of classifier.

Layer names are the targets of recipes/alexnet.yaml; as in VGG, convs are named after their index
in torchvision's `features` Sequential (`features.3` -> `conv3`).
"""
from __future__ import annotations

import keras

from zoo.models.common import conv2d, finish, input_layer, load_weights
from zoo.models.vgg import classifier_head

# (torch index, filters, kernel, stride, padding); a max-pool follows indices 0, 3 and 10.
CONVS = ((0, 64, 11, 4, 2), (3, 192, 5, 1, 2), (6, 384, 3, 1, 1), (8, 256, 3, 1, 1),
         (10, 256, 3, 1, 1))
POOLED = (0, 3, 10)


def alexnet(dropout=0.5, *, include_top=True, weights=None, input_shape=None, pooling=None,
            classes=1000, classifier_activation=None, features_only=False, name="alexnet"):
    """AlexNet; a stage ends with each max-pool (`stage1` ... `stage3`, strides 8, 16, 32);
    `include_top=False` returns `stage3`. Inputs of at least 63x63 pixels."""
    inputs = input_layer(input_shape)
    x = inputs
    stages = {}
    for index, filters, kernel, stride, padding in CONVS:
        # conv2d pads symmetrically (explicit ZeroPadding2D) for the stride-4 stem, like torch.
        x = conv2d(x, filters, kernel, stride=stride, padding=padding, use_bias=True,
                   name=f"conv{index}")
        x = keras.layers.ReLU(name=f"act{index + 1}")(x)
        if index in POOLED:
            # 3x3/2 without padding or ceil_mode: Keras "valid" floors exactly like torch.
            x = keras.layers.MaxPooling2D(3, 2, padding="valid", name=f"pool{index + 2}")(x)
            s = len(stages) + 1
            x = keras.layers.Identity(name=f"stage{s}")(x)
            stages[f"stage{s}"] = x
    if include_top and not features_only:
        x = classifier_head(x, pool_size=6, hidden=4096, dropout=dropout, dropout_first=True,
                            classes=classes, classifier_activation=classifier_activation)
        pooling = None
    model = finish(inputs, x, include_top=False, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, feature_layers=stages,
                   features_only=features_only, name=name)
    return load_weights(model, weights)
