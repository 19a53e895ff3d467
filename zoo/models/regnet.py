"""RegNet X/Y from timm `regnet.py` and torchvision `regnet.py`. Targets of recipes/regnet.yaml.

Both sources build the same network: a 3x3 stride-2 stem, four stages of bottleneck blocks with
bottleneck ratio 1 (1x1 -> grouped 3x3, stride on the 3x3 -> [SE] -> 1x1, residual, ReLU) and a
linear classifier. The per-stage widths/depths are passed explicitly (the values timm's
`generate_regnet` + `adjust_widths_groups_comp` and torchvision's `BlockParams` produce; the
recipe comment shows them) instead of re-deriving them from (w0, wa, wm, depth): a list is
reviewable against the printed torch model, a float formula is not.

Layer names: `stem_conv/bn`, `stage<s>_block<b>_{conv1,bn1,conv2,bn2,se_fc1,se_fc2,conv3,bn3,
down_conv,down_bn}`, `predictions`. Block numbering follows the source (`first_block_index`):
timm numbers blocks from 1 (`s1.b1`, as pycls does), torchvision from 0 (`block1-0`); the Keras
names carry the source's own index, so both recipes copy it unchanged.
"""
from __future__ import annotations

import keras

from zoo.models.blocks import (
    Settings,
    application,
    cna_names,
    conv_norm_act,
    residual_add,
    squeeze_excite,
    stage_end,
)


def _block(x, in_ch, out_ch, stride, group_width, se_ratio, cfg, name):
    if out_ch % group_width:
        raise ValueError(f"{name}: width {out_ch} is not a multiple of group width {group_width}")
    shortcut = x
    if in_ch != out_ch or stride != 1:
        shortcut = conv_norm_act(x, out_ch, 1, stride, cfg=cfg,
                                 names=cna_names(f"{name}_down", act=False))
    y = conv_norm_act(x, out_ch, 1, cfg=cfg, names=cna_names(name, "1"))
    y = conv_norm_act(y, out_ch, 3, stride, cfg=cfg, groups=out_ch // group_width,
                      names=cna_names(name, "2"))
    if se_ratio:
        # Both sources size the SE bottleneck from the *block input* width, not the bottleneck
        # width it gates: int(round(in_ch * se_ratio)) (timm Bottleneck, torchvision
        # BottleneckTransform). They differ in the first block of every stage.
        y = squeeze_excite(y, int(round(in_ch * se_ratio)), prefix=name)
    y = conv_norm_act(y, out_ch, 1, cfg=cfg, names=cna_names(name, "3", act=False))
    return keras.layers.ReLU(name=f"{name}_out")(residual_add(y, shortcut, name))


@application("regnet")
def regnet(inputs, widths, depths, group_width, se_ratio=0.0, stem_width=32, bn_eps=1e-5,
           first_block_index=0):
    """RegNet X (`se_ratio=0`) or Y (`se_ratio=0.25`), NHWC input normalised like the source.

    widths/depths: per-stage output widths and block counts; group_width: channels per group of
    the 3x3 conv. Returns logits by default; `features_only=True` returns `stage1` ... `stage4`.
    """
    if len(widths) != len(depths):
        raise ValueError(f"widths {widths} and depths {depths} must have the same length")
    cfg = Settings(bn_eps=bn_eps)
    x = conv_norm_act(inputs, stem_width, 3, 2, cfg=cfg, names=cna_names("stem"))
    in_ch = stem_width
    for s, (width, depth) in enumerate(zip(widths, depths), start=1):
        for b in range(depth):
            x = _block(x, in_ch, width, 2 if b == 0 else 1, group_width, se_ratio, cfg,
                       f"stage{s}_block{b + first_block_index}")
            in_ch = width
        x = stage_end(x, f"stage{s}", 2 ** (s + 1))
    return x
