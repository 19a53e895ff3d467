"""ShuffleNetV2 (torchvision `shufflenetv2.py`). Target of recipes/shufflenet_v2.yaml.

Keras stage1 is the stem (conv1 + max-pool) so that stage2-4 carry torchvision's own stage
numbers; conv5 is the head conv. Blocks follow torchvision's InvertedResidual: stride 2 runs
branch1 (dw 3x3 s2, BN, 1x1, BN, ReLU) and branch2 (1x1, BN, ReLU, dw 3x3, BN, 1x1, BN, ReLU) on
the whole input; stride 1 splits the channels in two halves, keeps the first and runs branch2 on
the second. Both concatenate and shuffle the channels (2 groups). torchvision writes the split and
the shuffle for NCHW (`chunk(2, dim=1)`, `view(b, 2, c/2, h, w).transpose(1, 2)`); here they are
the channel-last layers zoo.layers.shuffle.ChannelSplit / ChannelShuffle.
"""
from __future__ import annotations

import keras

from zoo.layers import TorchMaxPool2D
from zoo.layers.shuffle import ChannelShuffle, ChannelSplit
from zoo.models.blocks import application, cna_names, conv_norm_act, depthwise_separable, stage_end

_ARCHS = {   # width multiplier -> (stem, stage2, stage3, stage4, head) channels
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


def _branch2(x, out_ch, stride, name):
    # 1x1 conv-bn-relu, then a depthwise-separable conv whose depthwise part has no activation
    x = conv_norm_act(x, out_ch, 1, names=(f"{name}_conv_pw", f"{name}_bn1", f"{name}_act1"))
    return depthwise_separable(x, out_ch, 3, stride, prefix=name,
                               names=("conv_dw", "bn2", None, "conv_pwl", "bn3", "act3"))


def _block(x, out_ch, stride, name):
    half = out_ch // 2
    if stride == 1:
        keep, x2 = ChannelSplit(2, name=f"{name}_split")(x)
        parts = [keep, _branch2(x2, half, 1, f"{name}_b2")]
    else:
        branch1 = depthwise_separable(x, half, 3, 2, prefix=f"{name}_b1",
                                      names=("conv_dw", "bn1", None, "conv_pw", "bn2", "act"))
        parts = [branch1, _branch2(x, half, stride, f"{name}_b2")]
    x = keras.layers.Concatenate(name=f"{name}_concat")(parts)
    return ChannelShuffle(2, name=f"{name}_shuffle")(x)


@application(lambda width_multiplier, **_: f"shufflenet_v2_x{width_multiplier:.1f}".replace(".", "_"))
def shufflenet_v2(inputs, width_multiplier=1.0, depths=(4, 8, 4)):
    """ShuffleNetV2 (x0.5 / x1.0 / x1.5 / x2.0), NHWC input normalised like torchvision; logits.

    `include_top=False` ends after conv5. `features_only=True` returns stage1 (stem, stride 4)
    and stage2-4.
    """
    if width_multiplier not in _ARCHS:
        raise ValueError(f"width_multiplier must be one of {sorted(_ARCHS)}, got {width_multiplier!r}")
    stem, *widths, head = _ARCHS[width_multiplier]
    x = conv_norm_act(inputs, stem, 3, 2, names=cna_names("stem"))
    x = TorchMaxPool2D(3, 2, padding=1, name="stem_pool")(x)
    x = stage_end(x, "stage1", 4)
    for s, (out_ch, depth) in enumerate(zip(widths, depths), start=2):
        for b in range(depth):
            x = _block(x, out_ch, 2 if b == 0 else 1, f"stage{s}_block{b}")
        x = stage_end(x, f"stage{s}", 2 ** (s + 1))
    return conv_norm_act(x, head, 1, names=cna_names("head"))
