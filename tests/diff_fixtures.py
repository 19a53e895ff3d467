"""Keras builders with one deliberate mistake each, for the diff_layers tests."""
import keras

import zoo.models.resnet as resnet_module
from zoo.models.resnet import resnet


def resnet_bn_eps(**kwargs):
    """BatchNorm eps 1e-3 (Keras' default) instead of torch's 1e-5 in one layer."""
    model = resnet(**kwargs)
    model.get_layer("stage2_block0_bn1").epsilon = 1e-3
    return model


def resnet_same_padding(**kwargs):
    """TF 'same' padding instead of symmetric padding on one stride-2 conv."""
    original = resnet_module.conv2d

    def conv2d(x, filters, kernel, stride=1, name=None, **kw):
        if name == "stage3_block0_conv1":
            return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same",
                                       use_bias=False, name=name)(x)
        return original(x, filters, kernel, stride=stride, name=name, **kw)

    resnet_module.conv2d = conv2d
    try:
        return resnet(**kwargs)
    finally:
        resnet_module.conv2d = original
