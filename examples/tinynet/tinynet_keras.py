"""Keras twin of tinynet_torch.TinyNet (a user's own builder: `python:tinynet_keras:tinynet`)."""
import keras

from zoo.models.common import batchnorm, conv2d, finish, input_layer, load_weights


def _block(x, cin, cout, stride, name, gelu_approximate):
    y = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x) if stride > 1 else x
    y = keras.layers.DepthwiseConv2D(3, stride, padding="valid" if stride > 1 else "same",
                                     use_bias=False, name=f"{name}_dw")(y)
    y = batchnorm(y, name=f"{name}_bn1")
    # torch nn.GELU() is the exact erf form (Keras "gelu" too); the tanh approximation differs
    # by up to ~1e-3 and exists here only so that the guide can show what that mistake looks like
    if gelu_approximate:
        y = keras.layers.Lambda(lambda t: keras.activations.gelu(t, approximate=True),
                                name=f"{name}_act")(y)
    else:
        y = keras.layers.Activation("gelu", name=f"{name}_act")(y)
    y = conv2d(y, cout, 1, name=f"{name}_pw")
    y = batchnorm(y, name=f"{name}_bn2")
    if stride == 1 and cin == cout:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def tinynet(widths=(16, 32, 64), gelu_approximate=False, *, include_top=True, weights=None,
            input_shape=None, pooling=None, classes=10, classifier_activation=None,
            features_only=False, name="tinynet"):
    inputs = input_layer(input_shape)
    x = conv2d(inputs, widths[0], 3, stride=2, name="stem_conv")
    x = keras.layers.ReLU(name="stem_act")(batchnorm(x, name="stem_bn"))
    stages, cin, i = {}, widths[0], 0
    for s, w in enumerate(widths, start=1):
        for stride in (2 if w != cin else 1, 1):
            x = _block(x, cin, w, stride, f"block{i}", gelu_approximate)
            cin, i = w, i + 1
        x = keras.layers.Identity(name=f"stage{s}")(x)
        stages[f"stage{s}"] = x
    model = finish(inputs, x, include_top=include_top, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, feature_layers=stages,
                   features_only=features_only, name=name, head_name="head")
    return load_weights(model, weights)
