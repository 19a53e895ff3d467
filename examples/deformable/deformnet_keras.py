"""Keras twin of deformnet_torch.DeformNet (`python:deformnet_keras:deformnet`): the zoo's
DeformConv2D layer takes the offset and mask computed by the model's own convs, as in torchvision."""
import keras

from zoo.layers.deform_conv import DeformConv2D
from zoo.models.blocks import (
    activation,
    application,
    cna_names,
    conv2d,
    conv_norm_act,
    norm,
    stage_end,
)


def _block(x, cout, stride, groups, offset_groups, name):
    taps = 3 * 3 * offset_groups
    # offset and mask convs: torch padding 1 with a bias (blocks.conv2d pads symmetrically)
    offset = conv2d(x, 2 * taps, 3, stride, use_bias=True, name=f"{name}_offset")
    mask = activation(conv2d(x, taps, 3, stride, use_bias=True, name=f"{name}_mask"), "sigmoid",
                      f"{name}_mask_sigmoid")
    y = DeformConv2D(cout, 3, strides=stride, padding=1, groups=groups, use_bias=False,
                     name=f"{name}_deform")([x, offset, mask])
    return activation(norm(y, f"{name}_bn"), "relu", f"{name}_act")


def _top(x, classes, classifier_activation):
    # torch: mean over H, W -> Linear named `head`
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Dense(classes, activation=classifier_activation, name="head")(x)


@application("deformnet", classes=10)
def deformnet(inputs):
    x = conv_norm_act(inputs, 16, 3, 2, names=cna_names("stem"))
    x = stage_end(_block(x, 32, 1, 1, 1, "block0"), "stage1", 2)
    x = stage_end(_block(x, 48, 2, 2, 2, "block1"), "stage2", 4)
    return x, _top
