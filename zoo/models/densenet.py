"""DenseNet-BC (torchvision `densenet.py` and timm `densenet.py`: the same network with the same
module names for the plain stem, so one builder serves both). Layer names mirror the torch module
paths without `features.` (`features.denseblock2.denselayer3.norm1` ->
`denseblock2_denselayer3_norm1`); they are the targets of recipes/densenet.yaml.

Pre-activation throughout: every conv is preceded by BN -> ReLU (torchvision's norm/relu pairs,
timm's BatchNormAct2d), and the network ends with norm5 -> ReLU before the pooling.
"""
from __future__ import annotations

import keras

from zoo.layers import TorchMaxPool2D
from zoo.models.blocks import activation, application, conv2d, norm, stage_end


def _bn_relu(x, name):
    return activation(norm(x, name), "relu", f"{name}_relu")


def _dense_concat(features, new, name):
    # torch.cat([init, new_1, ..., new_k], 1): appending each new map at the end of the running
    # concatenation yields the same channel order (cat is associative).
    return keras.layers.Concatenate(axis=-1, name=name)([features, new])


def _dense_layer(x, growth_rate, bn_size, name):
    y = conv2d(_bn_relu(x, f"{name}_norm1"), bn_size * growth_rate, 1, name=f"{name}_conv1")
    return conv2d(_bn_relu(y, f"{name}_norm2"), growth_rate, 3, name=f"{name}_conv2")


def _transition(x, out_ch, name):
    x = conv2d(_bn_relu(x, f"{name}_norm"), out_ch, 1, name=f"{name}_conv")
    # nn.AvgPool2d(2, 2): no padding, floor mode -> identical to Keras "valid"
    return keras.layers.AveragePooling2D(2, strides=2, padding="valid", name=f"{name}_pool")(x)


@application("densenet")
def densenet(inputs, block_config=(6, 12, 24, 16), growth_rate=32, num_init_features=64,
             bn_size=4):
    """DenseNet-BC, NHWC input normalised like the PyTorch source; returns logits by default.

    `features_only=True` returns `stage1` ... `stage3` (the outputs of dense blocks 1-3, strides
    4, 8, 16, before each transition) and `stage4` (norm5 + ReLU after the last block, stride
    32), the same taps as timm's feature_info minus its stride-2 stem.
    """
    x = conv2d(inputs, num_init_features, 7, stride=2, padding=3, name="conv0")
    x = _bn_relu(x, "norm0")
    x = TorchMaxPool2D(3, 2, padding=1, name="pool0")(x)
    channels = num_init_features
    for b, num_layers in enumerate(block_config, start=1):
        for i in range(1, num_layers + 1):
            name_ = f"denseblock{b}_denselayer{i}"
            x = _dense_concat(x, _dense_layer(x, growth_rate, bn_size, name_), f"{name_}_concat")
        channels += num_layers * growth_rate
        if b < len(block_config):
            x = stage_end(x, f"stage{b}", 2 ** (b + 1))
            channels //= 2
            x = _transition(x, channels, f"transition{b}")
    # torchvision: F.relu(features(x)) with norm5 last in `features`; timm: norm5 is BN + ReLU
    x = _bn_relu(x, "norm5")
    return stage_end(x, f"stage{len(block_config)}", 2 ** (len(block_config) + 1))
