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



def landmarks_no_permute(input_shape=(48, 48, 3), **_):
    """io_models.landmarks_keras with its Permute layer replaced by an Identity: the Flatten takes
    the NHWC map in (H, W, C) order, while torch permutes to (W, H, C) before flattening (same
    layers, names and weight shapes, so the mapping succeeds and only the numbers show it)."""
    from io_models import landmarks_keras

    def clone(layer):
        if isinstance(layer, keras.layers.Permute):
            return keras.layers.Identity(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(landmarks_keras(input_shape), clone_function=clone)
