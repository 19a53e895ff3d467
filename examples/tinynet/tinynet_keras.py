"""Keras twin of tinynet_torch.TinyNet (a user's own builder: `python:tinynet_keras:tinynet`),
assembled from zoo.models.blocks."""
import keras

from zoo.models.blocks import (
    activation,
    application,
    cna_names,
    conv2d,
    conv_norm_act,
    depthwise,
    norm,
    residual_add,
    stage_end,
)


def _block(x, cout, stride, name, gelu_approximate):
    # depthwise 3x3 (torch padding 1: blocks pad symmetrically, also when strided) -> BN -> GELU
    y = norm(depthwise(x, 3, stride, name=f"{name}_dw"), f"{name}_bn1")
    # torch nn.GELU() is the exact erf form (Keras "gelu" too); the tanh approximation differs
    # by up to ~1e-3 and exists here only so that the guide can show what that mistake looks like
    if gelu_approximate:
        y = keras.layers.Lambda(lambda t: keras.activations.gelu(t, approximate=True),
                                name=f"{name}_act")(y)
    else:
        y = activation(y, "gelu", f"{name}_act")
    y = norm(conv2d(y, cout, 1, name=f"{name}_pw"), f"{name}_bn2")
    return residual_add(y, x, name) if stride == 1 and x.shape[-1] == cout else y


def _top(x, classes, classifier_activation):
    # torch: mean over H, W -> Linear named `head`
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Dense(classes, activation=classifier_activation, name="head")(x)


@application("tinynet", classes=10)
def tinynet(inputs, widths=(16, 32, 64), gelu_approximate=False):
    x = conv_norm_act(inputs, widths[0], 3, 2, names=cna_names("stem"))
    i, reduction = 0, 2
    for s, w in enumerate(widths, start=1):
        for stride in (2 if w != x.shape[-1] else 1, 1):
            x = _block(x, w, stride, f"block{i}", gelu_approximate)
            i, reduction = i + 1, reduction * stride
        x = stage_end(x, f"stage{s}", reduction)
    return x, _top
