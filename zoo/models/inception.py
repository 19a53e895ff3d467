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

from zoo.models import blocks
from zoo.models.blocks import basic_conv2d, stage_end


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


def _block_a(x, pool_features, cfg, name):
    b1 = basic_conv2d(x, 64, 1, cfg=cfg, name=f"{name}_branch1x1")
    b5 = basic_conv2d(x, 48, 1, cfg=cfg, name=f"{name}_branch5x5_1")
    b5 = basic_conv2d(b5, 64, 5, padding=2, cfg=cfg, name=f"{name}_branch5x5_2")
    b3 = basic_conv2d(x, 64, 1, cfg=cfg, name=f"{name}_branch3x3dbl_1")
    b3 = basic_conv2d(b3, 96, 3, padding=1, cfg=cfg, name=f"{name}_branch3x3dbl_2")
    b3 = basic_conv2d(b3, 96, 3, padding=1, cfg=cfg, name=f"{name}_branch3x3dbl_3")
    bp = _avg_pool_3x3(x, f"{name}_avg_pool")
    bp = basic_conv2d(bp, pool_features, 1, cfg=cfg, name=f"{name}_branch_pool")
    return _concat([b1, b5, b3, bp], f"{name}_concat")


def _block_b(x, cfg, name):
    b3 = basic_conv2d(x, 384, 3, stride=2, cfg=cfg, name=f"{name}_branch3x3")
    bd = basic_conv2d(x, 64, 1, cfg=cfg, name=f"{name}_branch3x3dbl_1")
    bd = basic_conv2d(bd, 96, 3, padding=1, cfg=cfg, name=f"{name}_branch3x3dbl_2")
    bd = basic_conv2d(bd, 96, 3, stride=2, cfg=cfg, name=f"{name}_branch3x3dbl_3")
    bp = _max_pool_3x3_s2(x, f"{name}_max_pool")
    return _concat([b3, bd, bp], f"{name}_concat")


def _block_c(x, c7, cfg, name):
    b1 = basic_conv2d(x, 192, 1, cfg=cfg, name=f"{name}_branch1x1")
    b7 = basic_conv2d(x, c7, 1, cfg=cfg, name=f"{name}_branch7x7_1")
    b7 = basic_conv2d(b7, c7, (1, 7), padding=(0, 3), cfg=cfg, name=f"{name}_branch7x7_2")
    b7 = basic_conv2d(b7, 192, (7, 1), padding=(3, 0), cfg=cfg, name=f"{name}_branch7x7_3")
    bd = basic_conv2d(x, c7, 1, cfg=cfg, name=f"{name}_branch7x7dbl_1")
    bd = basic_conv2d(bd, c7, (7, 1), padding=(3, 0), cfg=cfg, name=f"{name}_branch7x7dbl_2")
    bd = basic_conv2d(bd, c7, (1, 7), padding=(0, 3), cfg=cfg, name=f"{name}_branch7x7dbl_3")
    bd = basic_conv2d(bd, c7, (7, 1), padding=(3, 0), cfg=cfg, name=f"{name}_branch7x7dbl_4")
    bd = basic_conv2d(bd, 192, (1, 7), padding=(0, 3), cfg=cfg, name=f"{name}_branch7x7dbl_5")
    bp = _avg_pool_3x3(x, f"{name}_avg_pool")
    bp = basic_conv2d(bp, 192, 1, cfg=cfg, name=f"{name}_branch_pool")
    return _concat([b1, b7, bd, bp], f"{name}_concat")


def _block_d(x, cfg, name):
    b3 = basic_conv2d(x, 192, 1, cfg=cfg, name=f"{name}_branch3x3_1")
    b3 = basic_conv2d(b3, 320, 3, stride=2, cfg=cfg, name=f"{name}_branch3x3_2")
    b7 = basic_conv2d(x, 192, 1, cfg=cfg, name=f"{name}_branch7x7x3_1")
    b7 = basic_conv2d(b7, 192, (1, 7), padding=(0, 3), cfg=cfg, name=f"{name}_branch7x7x3_2")
    b7 = basic_conv2d(b7, 192, (7, 1), padding=(3, 0), cfg=cfg, name=f"{name}_branch7x7x3_3")
    b7 = basic_conv2d(b7, 192, 3, stride=2, cfg=cfg, name=f"{name}_branch7x7x3_4")
    bp = _max_pool_3x3_s2(x, f"{name}_max_pool")
    return _concat([b3, b7, bp], f"{name}_concat")


def _block_e(x, cfg, name):
    b1 = basic_conv2d(x, 320, 1, cfg=cfg, name=f"{name}_branch1x1")
    b3 = basic_conv2d(x, 384, 1, cfg=cfg, name=f"{name}_branch3x3_1")
    b3 = _concat([basic_conv2d(b3, 384, (1, 3), padding=(0, 1), cfg=cfg, name=f"{name}_branch3x3_2a"),
                  basic_conv2d(b3, 384, (3, 1), padding=(1, 0), cfg=cfg, name=f"{name}_branch3x3_2b")],
                 f"{name}_branch3x3_concat")
    bd = basic_conv2d(x, 448, 1, cfg=cfg, name=f"{name}_branch3x3dbl_1")
    bd = basic_conv2d(bd, 384, 3, padding=1, cfg=cfg, name=f"{name}_branch3x3dbl_2")
    bd = _concat([basic_conv2d(bd, 384, (1, 3), padding=(0, 1), cfg=cfg,
                              name=f"{name}_branch3x3dbl_3a"),
                  basic_conv2d(bd, 384, (3, 1), padding=(1, 0), cfg=cfg,
                              name=f"{name}_branch3x3dbl_3b")],
                 f"{name}_branch3x3dbl_concat")
    bp = _avg_pool_3x3(x, f"{name}_avg_pool")
    bp = basic_conv2d(bp, 192, 1, cfg=cfg, name=f"{name}_branch_pool")
    return _concat([b1, b3, bd, bp], f"{name}_concat")


@blocks.application("inception_v3")
def inception_v3(inputs, transform_input=False, bn_eps=blocks.BASIC_CONV2D_BN_EPS):
    """Inception v3, NHWC input normalised like the PyTorch source; returns logits by default.

    Native resolution 299; the smallest input the network accepts is 75 x 75.
    `transform_input` must equal the torchvision model's flag (True with its pretrained
    weights; timm has none). `features_only=True` returns `stage1` ... `stage5` (strides 2, 4,
    8, 16, 32: timm's feature_info taps Conv2d_2b_3x3, Conv2d_4a_3x3, Mixed_5d, Mixed_6e,
    Mixed_7c).
    """
    cfg = blocks.Settings(bn_eps=bn_eps)
    x = blocks.transform_input_layer(inputs) if transform_input else inputs
    x = basic_conv2d(x, 32, 3, stride=2, cfg=cfg, name="Conv2d_1a_3x3")
    x = basic_conv2d(x, 32, 3, cfg=cfg, name="Conv2d_2a_3x3")
    x = stage_end(basic_conv2d(x, 64, 3, padding=1, cfg=cfg, name="Conv2d_2b_3x3"), "stage1", 2)
    x = _max_pool_3x3_s2(x, "maxpool1")
    x = basic_conv2d(x, 80, 1, cfg=cfg, name="Conv2d_3b_1x1")
    x = stage_end(basic_conv2d(x, 192, 3, cfg=cfg, name="Conv2d_4a_3x3"), "stage2", 4)
    x = _max_pool_3x3_s2(x, "maxpool2")
    x = _block_a(x, 32, cfg, "Mixed_5b")
    x = _block_a(x, 64, cfg, "Mixed_5c")
    x = stage_end(_block_a(x, 64, cfg, "Mixed_5d"), "stage3", 8)
    x = _block_b(x, cfg, "Mixed_6a")
    for block, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160)):
        x = _block_c(x, c7, cfg, block)
    x = stage_end(_block_c(x, 192, cfg, "Mixed_6e"), "stage4", 16)
    x = _block_d(x, cfg, "Mixed_7a")
    x = _block_e(x, cfg, "Mixed_7b")
    # torch: avgpool -> dropout (identity in eval) -> flatten -> fc
    return stage_end(_block_e(x, cfg, "Mixed_7c"), "stage5", 32)
