"""GoogLeNet / Inception v1 (torchvision `googlenet.py`). Layer names mirror the torch module
paths (`inception3a.branch2.1` -> `inception3a_branch2_1_conv`/`_bn`); they are the targets of
recipes/googlenet.yaml.

torchvision quirks reproduced on purpose:
- BasicConv2d's BatchNorm uses eps 1e-3 (the weights were ported from a TF-trained model);
- every max-pool uses `ceil_mode=True`, i.e. a partial window at the bottom/right;
- the "5x5" branch is really a 3x3 conv (a long-standing torchvision bug the weights rely on);
- `transform_input=True` (what the pretrained weights use) re-normalises the input from
  ImageNet mean/std to (x - 0.5) / 0.5 inside the model;
- the two auxiliary classifiers run only in training mode: they are not built here.
"""
from __future__ import annotations

import keras

from zoo.layers import TorchMaxPool2D
from zoo.models.common import batchnorm, conv2d, finish, input_layer, load_weights

BN_EPS = 1e-3   # torchvision BasicConv2d: nn.BatchNorm2d(out, eps=0.001)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Stages 2-4: the kernel of the ceil-mode max-pool that opens the stage, then its inception
# blocks as (name, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj).
_STAGES = (
    (3, (("inception3a", 64, 96, 128, 16, 32, 32),
         ("inception3b", 128, 128, 192, 32, 96, 64))),
    (3, (("inception4a", 192, 96, 208, 16, 48, 64),
         ("inception4b", 160, 112, 224, 24, 64, 64),
         ("inception4c", 128, 128, 256, 24, 64, 64),
         ("inception4d", 112, 144, 288, 32, 64, 64),
         ("inception4e", 256, 160, 320, 32, 128, 128))),
    (2, (("inception5a", 256, 160, 320, 32, 128, 128),
         ("inception5b", 384, 192, 384, 48, 128, 128))),
)


def transform_input_layer(x, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="transform_input"):
    """torchvision's `_transform_input`: x_c * (std_c / 0.5) + (mean_c - 0.5) / 0.5 per channel,
    i.e. undo the ImageNet normalisation and apply the (x - 0.5) / 0.5 one the weights expect.
    Shared with zoo.models.inception (torchvision Inception3 does the same)."""
    return keras.layers.Rescaling(scale=[s / 0.5 for s in std],
                                  offset=[(m - 0.5) / 0.5 for m in mean], name=name)(x)


def _basic_conv(x, filters, kernel, stride=1, padding=0, bn_eps=BN_EPS, name=None):
    # BasicConv2d: conv (no bias) -> BN -> ReLU
    x = conv2d(x, filters, kernel, stride=stride, padding=padding, name=f"{name}_conv")
    x = batchnorm(x, eps=bn_eps, name=f"{name}_bn")
    return keras.layers.ReLU(name=f"{name}_act")(x)


def _inception(x, ch1, ch3red, ch3, ch5red, ch5, pool_proj, bn_eps, name):
    b1 = _basic_conv(x, ch1, 1, bn_eps=bn_eps, name=f"{name}_branch1")
    b2 = _basic_conv(x, ch3red, 1, bn_eps=bn_eps, name=f"{name}_branch2_0")
    b2 = _basic_conv(b2, ch3, 3, padding=1, bn_eps=bn_eps, name=f"{name}_branch2_1")
    # the "5x5" branch uses a 3x3 kernel in torchvision (see the module docstring)
    b3 = _basic_conv(x, ch5red, 1, bn_eps=bn_eps, name=f"{name}_branch3_0")
    b3 = _basic_conv(b3, ch5, 3, padding=1, bn_eps=bn_eps, name=f"{name}_branch3_1")
    b4 = TorchMaxPool2D(3, 1, padding=1, ceil_mode=True, name=f"{name}_branch4_0")(x)
    b4 = _basic_conv(b4, pool_proj, 1, bn_eps=bn_eps, name=f"{name}_branch4_1")
    # torch.cat(..., dim=1) in branch order == channels-last concat in the same order
    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([b1, b2, b3, b4])


def googlenet(transform_input=False, bn_eps=BN_EPS, *, include_top=True,
              weights=None, input_shape=None, pooling=None, classes=1000,
              classifier_activation=None, features_only=False, name="googlenet"):
    """GoogLeNet, NHWC input normalised like the PyTorch source; returns logits by default.

    `transform_input` must equal the torch model's flag (True for torchvision's pretrained
    weights). `bn_eps` is torchvision's 1e-3. `features_only=True` returns `stage1` (stride 4) ...
    `stage4` (stride 32).
    """
    inputs = input_layer(input_shape)
    x = transform_input_layer(inputs) if transform_input else inputs
    x = _basic_conv(x, 64, 7, stride=2, padding=3, bn_eps=bn_eps, name="conv1")
    x = TorchMaxPool2D(3, 2, ceil_mode=True, name="maxpool1")(x)
    x = _basic_conv(x, 64, 1, bn_eps=bn_eps, name="conv2")
    x = _basic_conv(x, 192, 3, padding=1, bn_eps=bn_eps, name="conv3")
    stages = {}
    x = stages["stage1"] = keras.layers.Identity(name="stage1")(x)
    for s, (pool_kernel, blocks) in enumerate(_STAGES, start=2):
        x = TorchMaxPool2D(pool_kernel, 2, ceil_mode=True, name=f"maxpool{s}")(x)
        for block_name, *channels in blocks:
            x = _inception(x, *channels, bn_eps=bn_eps, name=block_name)
        x = stages[f"stage{s}"] = keras.layers.Identity(name=f"stage{s}")(x)
    # torch: avgpool -> flatten -> dropout(0.2, identity in eval) -> fc
    model = finish(inputs, x, include_top=include_top, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, feature_layers=stages,
                   features_only=features_only, name=name)
    return load_weights(model, weights)
