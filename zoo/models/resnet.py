"""ResNet family (timm `resnet.py` and torchvision `resnet.py`): basic/bottleneck blocks,
ResNeXt groups, wide bottlenecks, the ResNet-D deep stem with average-pool downsampling, and
squeeze-excite (SE-ResNeXt). Layer names are the targets of recipes/resnet.yaml."""
from __future__ import annotations

import keras

from zoo.layers import TorchMaxPool2D
from zoo.models.blocks import (
    activation,
    application,
    cna_names,
    conv2d,
    make_divisible,
    norm,
    residual_add,
    squeeze_excite,
    stage_end,
)


def _conv_bn(x, filters, kernel, name, suffix, stride=1, groups=1, act=True, dilation=1):
    # blocks.conv_norm_act spelled out with this module's conv2d, which tests/diff_fixtures.py
    # swaps for a wrong one
    conv_name, bn_name, act_name = cna_names(name, suffix, act)
    x = norm(conv2d(x, filters, kernel, stride=stride, groups=groups, dilation=dilation,
                    name=conv_name), bn_name)
    return activation(x, "relu", act_name) if act else x


def _shortcut(x, out_ch, stride, avg_down, name):
    if avg_down:
        if stride > 1:
            # AvgPool2d(2, s, ceil_mode=True, count_include_pad=False): TF "same" pads only at the
            # end and excludes the pad from the mean, which is exactly that partial last window.
            x = keras.layers.AveragePooling2D(2, stride, padding="same", name=f"{name}_pool")(x)
        stride = 1
    return _conv_bn(x, out_ch, 1, name, "", stride=stride, act=False)


def _block(x, kind, planes, stride, groups, base_width, se, avg_down, downsample, name,
           dilation=1):
    expansion = 1 if kind == "basic" else 4
    out_ch = planes * expansion
    shortcut = _shortcut(x, out_ch, stride, avg_down, f"{name}_down") if downsample else x
    if kind == "basic":
        if dilation > 1:   # as torchvision's BasicBlock, which raises NotImplementedError
            raise ValueError("dilation > 1 needs bottleneck blocks")
        y = _conv_bn(x, planes, 3, name, "1", stride=stride)
        y = _conv_bn(y, planes, 3, name, "2", act=False)
    else:
        width = int(planes * (base_width / 64.0)) * groups
        y = _conv_bn(x, width, 1, name, "1")
        y = _conv_bn(y, width, 3, name, "2", stride=stride, groups=groups, dilation=dilation)
        y = _conv_bn(y, out_ch, 1, name, "3", act=False)
    if se:
        # timm SEModule on the block output, rd = make_divisible(C / 16, 8, round_limit=0)
        y = squeeze_excite(y, make_divisible(out_ch / 16, 8, round_limit=0.0), prefix=name)
    return keras.layers.ReLU(name=f"{name}_out")(residual_add(y, shortcut, name)), out_ch


@application("resnet")
def resnet(inputs, depths, block="bottleneck", groups=1, width_per_group=64, stem="default",
           stem_width=64, avg_down=False, se=False, replace_stride_with_dilation=(False,) * 3):
    """ResNet v1.5 (stride on the 3x3 conv), NHWC input normalised like the PyTorch source.

    Returns logits by default (`classifier_activation=None`), as the PyTorch model does.
    `features_only=True` returns the output of every stage (`stage1` ... `stage4`).
    replace_stride_with_dilation: torchvision's per-stage flags for stages 2-4 (segmentation
    backbones: [False, True, True], output stride 8): such a stage does not stride; its 3x3
    convs are dilated by the stride it would have had, times the dilation before it.
    """
    if block not in ("basic", "bottleneck"):
        raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
    if stem not in ("default", "deep"):
        raise ValueError(f"stem must be 'default' or 'deep', got {stem!r}")
    x = inputs
    if stem == "deep":
        x = _conv_bn(x, stem_width, 3, "stem", "1", stride=2)
        x = _conv_bn(x, stem_width, 3, "stem", "2")
        x = conv2d(x, stem_width * 2, 3, name="stem_conv3")
        in_ch = stem_width * 2
    else:
        x = conv2d(x, 64, 7, stride=2, name="stem_conv")
        in_ch = 64
    x = activation(norm(x, "stem_bn"), "relu", "stem_act")
    x = TorchMaxPool2D(3, 2, padding=1, name="stem_pool")(x)

    dilate = (False, *replace_stride_with_dilation)
    if len(dilate) != len(depths):
        raise ValueError(f"replace_stride_with_dilation: one flag per stage after the first, got "
                         f"{list(replace_stride_with_dilation)} for {len(depths)} stages")
    dilation, reduction = 1, 4
    for s, depth in enumerate(depths, start=1):
        planes = 64 * 2 ** (s - 1)
        stride, previous = (2 if s > 1 else 1), dilation
        if dilate[s - 1]:
            dilation, stride = dilation * stride, 1
        reduction *= stride
        for b in range(depth):
            # torchvision: the first block of a stage keeps the dilation of the stage before
            block_stride, block_dilation = (stride, previous) if b == 0 else (1, dilation)
            downsample = b == 0 and (block_stride != 1 or
                                     in_ch != planes * (1 if block == "basic" else 4))
            x, in_ch = _block(x, block, planes, block_stride, groups, width_per_group, se,
                              avg_down, downsample, f"stage{s}_block{b}", block_dilation)
        x = stage_end(x, f"stage{s}", reduction)
    return x
