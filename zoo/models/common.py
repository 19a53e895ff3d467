"""Building blocks shared by the Keras builders: PyTorch-semantics conv/BN and the standard
keras.applications-style head/backbone handling."""
from __future__ import annotations

import keras

TORCH_BN_MOMENTUM = 0.9   # torch momentum 0.1 weights the new batch; keras weights the old value


def conv2d(x, filters, kernel, stride=1, groups=1, use_bias=False, padding=None, dilation=1,
           name=None):
    """`nn.Conv2d(..., padding=kernel // 2)`: symmetric zero padding.

    Keras "same" pads more at the end when a strided conv sees an even input, which shifts every
    output by one pixel; so strided convs get an explicit symmetric ZeroPadding2D + "valid".
    """
    pad = dilation * (kernel - 1) // 2 if padding is None else padding
    if stride == 1 and pad == dilation * (kernel - 1) // 2 and kernel % 2 == 1:
        mode = "same"   # identical to symmetric padding for stride 1 and odd kernels
    else:
        mode = "valid"
        if pad:
            x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding=mode, groups=groups,
                               dilation_rate=dilation, use_bias=use_bias, name=name)(x)


def batchnorm(x, eps=1e-5, name=None):
    return keras.layers.BatchNormalization(epsilon=eps, momentum=TORCH_BN_MOMENTUM, name=name)(x)


def make_divisible(v, divisor=8, min_value=None, round_limit=0.9):
    """Channel rounding used by timm/torchvision (needed to reproduce their widths)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def input_layer(input_shape, in_chans=3):
    shape = tuple(input_shape) if input_shape is not None else (None, None, in_chans)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    return keras.Input(shape, name="pixels")


def finish(inputs, x, *, include_top, pooling, classes, classifier_activation, feature_layers,
           features_only, name, head_name="predictions"):
    """keras.applications-style ending: classifier, pooled features, or multi-scale features."""
    if features_only:
        return keras.Model(inputs, [feature_layers[n] for n in feature_layers], name=name)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name=head_name)(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    elif pooling is not None:
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    return keras.Model(inputs, x, name=name)


def load_weights(model, weights):
    """keras.applications' `weights=` argument: None or a local `.weights.h5` file."""
    if weights is None:
        return model
    if not str(weights).endswith(".weights.h5"):
        raise ValueError(f"weights must be None or a path to a .weights.h5 file, got {weights!r} "
                         "(use zoo.create_model(name, pretrained=...) for catalogue weights)")
    model.load_weights(weights)
    return model
