"""Inception v3 (torchvision `inception.py` and timm `inception_v3.py`: the same network with the
same module names, so one builder serves both). Layer names mirror the torch module paths
(`Mixed_6b.branch7x7_2` -> `Mixed_6b_branch7x7_2_conv`/`_bn`/`_act`); they are the targets of
recipes/inception_v3.yaml.

What differs from a plain port:
- every BatchNorm uses eps 1e-3 (both sources);
- the pooling branch of blocks A/C/E is `F.avg_pool2d(x, 3, 1, padding=1)` whose
  `count_include_pad=True` divides border windows by 9; Keras "same" average pooling divides by
  the number of real pixels, so the input is zero-padded explicitly and pooled "valid";
- 1x7 / 7x1 (and 1x3 / 3x1) convs have per-axis padding (0, 3) / (3, 0);
- torchvision's `transform_input` (set with its pretrained weights) re-normalises the input inside
  the model; timm has no such flag (its pretrained config uses mean = std = 0.5 instead);
- the auxiliary classifier runs only in training mode: it is not built here.
"""
from __future__ import annotations

import keras

from zoo.models.common import batchnorm, finish, input_layer, load_weights
from zoo.models.googlenet import transform_input_layer

BN_EPS = 1e-3   # torchvision BasicConv2d / timm ConvNormAct(norm_kwargs=dict(eps=1e-3))


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv(x, filters, kernel, stride=1, padding=0, name=None):
    """`nn.Conv2d(kernel_size=kernel, stride, padding)` with per-axis kernel/padding (common.conv2d
    takes one int): "same" when that is identical (stride 1, padding (k - 1) // 2 per axis),
    otherwise explicit zero padding + "valid"."""
    (kh, kw), (ph, pw) = _pair(kernel), _pair(padding)
    if stride == 1 and (ph, pw) == ((kh - 1) // 2, (kw - 1) // 2) and kh % 2 and kw % 2:
        mode = "same"
    else:
        mode = "valid"
        if ph or pw:
            x = keras.layers.ZeroPadding2D(((ph, ph), (pw, pw)), name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, (kh, kw), strides=stride, padding=mode, use_bias=False,
                               name=name)(x)


def _basic_conv(x, filters, kernel, stride=1, padding=0, *, eps, name):
    x = _conv(x, filters, kernel, stride, padding, name=f"{name}_conv")
    x = batchnorm(x, eps=eps, name=f"{name}_bn")
    return keras.layers.ReLU(name=f"{name}_act")(x)


def _avg_pool_3x3(x, name):
    # F.avg_pool2d(x, 3, stride=1, padding=1), count_include_pad=True: zeros count in the mean.
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.AveragePooling2D(3, strides=1, padding="valid", name=name)(x)


def _max_pool_3x3_s2(x, name):
    # nn.MaxPool2d(3, 2), no padding, floor mode: identical to Keras "valid".
    return keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=name)(x)


def _concat(tensors, name):
    # torch.cat(branches, dim=1) == channels-last concat in the same branch order
    return keras.layers.Concatenate(axis=-1, name=name)(tensors)


def _block_a(x, pool_features, eps, name):
    b1 = _basic_conv(x, 64, 1, eps=eps, name=f"{name}_branch1x1")
    b5 = _basic_conv(x, 48, 1, eps=eps, name=f"{name}_branch5x5_1")
    b5 = _basic_conv(b5, 64, 5, padding=2, eps=eps, name=f"{name}_branch5x5_2")
    b3 = _basic_conv(x, 64, 1, eps=eps, name=f"{name}_branch3x3dbl_1")
    b3 = _basic_conv(b3, 96, 3, padding=1, eps=eps, name=f"{name}_branch3x3dbl_2")
    b3 = _basic_conv(b3, 96, 3, padding=1, eps=eps, name=f"{name}_branch3x3dbl_3")
    bp = _avg_pool_3x3(x, f"{name}_avg_pool")
    bp = _basic_conv(bp, pool_features, 1, eps=eps, name=f"{name}_branch_pool")
    return _concat([b1, b5, b3, bp], f"{name}_concat")


def _block_b(x, eps, name):
    b3 = _basic_conv(x, 384, 3, stride=2, eps=eps, name=f"{name}_branch3x3")
    bd = _basic_conv(x, 64, 1, eps=eps, name=f"{name}_branch3x3dbl_1")
    bd = _basic_conv(bd, 96, 3, padding=1, eps=eps, name=f"{name}_branch3x3dbl_2")
    bd = _basic_conv(bd, 96, 3, stride=2, eps=eps, name=f"{name}_branch3x3dbl_3")
    bp = _max_pool_3x3_s2(x, f"{name}_max_pool")
    return _concat([b3, bd, bp], f"{name}_concat")


def _block_c(x, c7, eps, name):
    b1 = _basic_conv(x, 192, 1, eps=eps, name=f"{name}_branch1x1")
    b7 = _basic_conv(x, c7, 1, eps=eps, name=f"{name}_branch7x7_1")
    b7 = _basic_conv(b7, c7, (1, 7), padding=(0, 3), eps=eps, name=f"{name}_branch7x7_2")
    b7 = _basic_conv(b7, 192, (7, 1), padding=(3, 0), eps=eps, name=f"{name}_branch7x7_3")
    bd = _basic_conv(x, c7, 1, eps=eps, name=f"{name}_branch7x7dbl_1")
    bd = _basic_conv(bd, c7, (7, 1), padding=(3, 0), eps=eps, name=f"{name}_branch7x7dbl_2")
    bd = _basic_conv(bd, c7, (1, 7), padding=(0, 3), eps=eps, name=f"{name}_branch7x7dbl_3")
    bd = _basic_conv(bd, c7, (7, 1), padding=(3, 0), eps=eps, name=f"{name}_branch7x7dbl_4")
    bd = _basic_conv(bd, 192, (1, 7), padding=(0, 3), eps=eps, name=f"{name}_branch7x7dbl_5")
    bp = _avg_pool_3x3(x, f"{name}_avg_pool")
    bp = _basic_conv(bp, 192, 1, eps=eps, name=f"{name}_branch_pool")
    return _concat([b1, b7, bd, bp], f"{name}_concat")


def _block_d(x, eps, name):
    b3 = _basic_conv(x, 192, 1, eps=eps, name=f"{name}_branch3x3_1")
    b3 = _basic_conv(b3, 320, 3, stride=2, eps=eps, name=f"{name}_branch3x3_2")
    b7 = _basic_conv(x, 192, 1, eps=eps, name=f"{name}_branch7x7x3_1")
    b7 = _basic_conv(b7, 192, (1, 7), padding=(0, 3), eps=eps, name=f"{name}_branch7x7x3_2")
    b7 = _basic_conv(b7, 192, (7, 1), padding=(3, 0), eps=eps, name=f"{name}_branch7x7x3_3")
    b7 = _basic_conv(b7, 192, 3, stride=2, eps=eps, name=f"{name}_branch7x7x3_4")
    bp = _max_pool_3x3_s2(x, f"{name}_max_pool")
    return _concat([b3, b7, bp], f"{name}_concat")


def _block_e(x, eps, name):
    b1 = _basic_conv(x, 320, 1, eps=eps, name=f"{name}_branch1x1")
    b3 = _basic_conv(x, 384, 1, eps=eps, name=f"{name}_branch3x3_1")
    b3 = _concat([_basic_conv(b3, 384, (1, 3), padding=(0, 1), eps=eps, name=f"{name}_branch3x3_2a"),
                  _basic_conv(b3, 384, (3, 1), padding=(1, 0), eps=eps, name=f"{name}_branch3x3_2b")],
                 f"{name}_branch3x3_concat")
    bd = _basic_conv(x, 448, 1, eps=eps, name=f"{name}_branch3x3dbl_1")
    bd = _basic_conv(bd, 384, 3, padding=1, eps=eps, name=f"{name}_branch3x3dbl_2")
    bd = _concat([_basic_conv(bd, 384, (1, 3), padding=(0, 1), eps=eps,
                              name=f"{name}_branch3x3dbl_3a"),
                  _basic_conv(bd, 384, (3, 1), padding=(1, 0), eps=eps,
                              name=f"{name}_branch3x3dbl_3b")],
                 f"{name}_branch3x3dbl_concat")
    bp = _avg_pool_3x3(x, f"{name}_avg_pool")
    bp = _basic_conv(bp, 192, 1, eps=eps, name=f"{name}_branch_pool")
    return _concat([b1, b3, bd, bp], f"{name}_concat")


def inception_v3(transform_input=False, bn_eps=BN_EPS, *, include_top=True, weights=None,
                 input_shape=None, pooling=None, classes=1000, classifier_activation=None,
                 features_only=False, name="inception_v3"):
    """Inception v3, NHWC input normalised like the PyTorch source; returns logits by default.

    Native resolution 299; the smallest input the network accepts is 75 x 75.
    `transform_input` must equal the torchvision model's flag (True with its pretrained
    weights; timm has none). `features_only=True` returns `stage1` ... `stage5` (strides 2, 4,
    8, 16, 32: timm's feature_info taps Conv2d_2b_3x3, Conv2d_4a_3x3, Mixed_5d, Mixed_6e,
    Mixed_7c).
    """
    eps = bn_eps
    inputs = input_layer(input_shape)
    x = transform_input_layer(inputs) if transform_input else inputs
    stages = {}

    def stage(t):
        name_ = f"stage{len(stages) + 1}"
        stages[name_] = keras.layers.Identity(name=name_)(t)
        return stages[name_]

    x = _basic_conv(x, 32, 3, stride=2, eps=eps, name="Conv2d_1a_3x3")
    x = _basic_conv(x, 32, 3, eps=eps, name="Conv2d_2a_3x3")
    x = stage(_basic_conv(x, 64, 3, padding=1, eps=eps, name="Conv2d_2b_3x3"))
    x = _max_pool_3x3_s2(x, "maxpool1")
    x = _basic_conv(x, 80, 1, eps=eps, name="Conv2d_3b_1x1")
    x = stage(_basic_conv(x, 192, 3, eps=eps, name="Conv2d_4a_3x3"))
    x = _max_pool_3x3_s2(x, "maxpool2")
    x = _block_a(x, 32, eps, "Mixed_5b")
    x = _block_a(x, 64, eps, "Mixed_5c")
    x = stage(_block_a(x, 64, eps, "Mixed_5d"))
    x = _block_b(x, eps, "Mixed_6a")
    for block, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160)):
        x = _block_c(x, c7, eps, block)
    x = stage(_block_c(x, 192, eps, "Mixed_6e"))
    x = _block_d(x, eps, "Mixed_7a")
    x = _block_e(x, eps, "Mixed_7b")
    x = stage(_block_e(x, eps, "Mixed_7c"))
    # torch: avgpool -> dropout (identity in eval) -> flatten -> fc
    model = finish(inputs, x, include_top=include_top, pooling=pooling, classes=classes,
                   classifier_activation=classifier_activation, feature_layers=stages,
                   features_only=features_only, name=name)
    return load_weights(model, weights)
