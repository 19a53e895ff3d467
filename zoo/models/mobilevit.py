"""MobileViT v1 (timm `mobilevit.py`: a ByobNet of inverted residual blocks and MobileViT blocks).
Target of recipes/mobilevit.yaml.

stem 3x3/2 conv-BN-SiLU -> stages 1, 2: inverted residual blocks (timm's ByobNet `bottle` block
with bottle_in: 1x1 expansion of the *input* width by `expansion`, depthwise 3x3, linear 1x1;
residual when the shape is kept) -> stages 3-5: one strided inverted residual block, then a
MobileViT block -> 1x1 conv-BN-SiLU `final_conv` -> average pool -> Linear.

MobileViT block (timm MobileVitBlock): local representation (3x3 conv-BN-SiLU, 1x1 conv to the
transformer width) -> unfold into 2x2-patch sequences (zoo.layers.patches.PatchUnfold, timm's
order) -> pre-norm transformer blocks (fused qkv, 4 heads, MLP ratio 2 with SiLU, LayerNorm eps
1e-5) -> LayerNorm -> fold -> 1x1 conv-BN-SiLU back to the stage width -> concatenated after
the block's input -> 3x3 conv-BN-SiLU fusion. A map that is not a whole number of patches is
resized bilinearly to one and back, as timm does, so any input size runs.

Feature stages `stage1`..`stage4` are timm's `stages.0`..`stages.3`; `stage5` is `final_conv`
(timm's feature_info for reduction 32).

Layer names: `stem_{conv,bn,act}`; `stage<s>_block<b>_{conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3}`
for timm's `stages.<s-1>.<b>.{conv1_1x1, conv2_kxk, conv3_1x1}.{conv, bn}`;
`stage<s>_block1_{conv_kxk_*, conv_1x1, unfold, transformer<i>_*, norm, fold, conv_proj_*,
concat, conv_fusion_*}`; `final_conv_{conv,bn,act}`; `avg_pool`, `predictions`.
"""
from __future__ import annotations

import keras

from zoo.layers.patches import PatchFold, PatchUnfold
from zoo.models.blocks import (
    Settings,
    application,
    cna_names,
    conv2d,
    conv_norm_act,
    inverted_residual,
    make_divisible,
    stage_end,
)
from zoo.models.blocks_transformer import layer_norm, transformer_block

SILU = Settings(act="silu")   # timm ByobNet act_layer='silu', BN eps 1e-5 / momentum 0.1
# MobileVitBlock's fixed hyper-parameters in timm's v1 configurations
HEADS, MLP_RATIO, LN_EPS, KERNEL = 4, 2.0, 1e-5, 3
# MobileViT v1 depths: inverted residual blocks in stages 1 and 2, transformer blocks in 3-5
IR_DEPTHS, TRANSFORMER_DEPTHS = (1, 3), (2, 4, 3)


def mobilevit_block(x, dim, depth, patch, *, name, cfg=SILU):
    """timm MobileVitBlock (stride 1, fusion on): see the module docstring."""
    shortcut, width = x, x.shape[-1]
    y = conv_norm_act(x, width, KERNEL, names=cna_names(f"{name}_conv_kxk"), cfg=cfg)
    local = conv2d(y, dim, 1, name=f"{name}_conv_1x1")
    t = PatchUnfold(patch, name=f"{name}_unfold")(local)
    for i in range(depth):
        t = transformer_block(t, HEADS, MLP_RATIO, name=f"{name}_transformer{i}", eps=LN_EPS,
                              act=cfg.act)
    t = layer_norm(t, LN_EPS, f"{name}_norm")
    y = PatchFold(patch, name=f"{name}_fold")([t, local])
    y = conv_norm_act(y, width, 1, names=cna_names(f"{name}_conv_proj"), cfg=cfg)
    y = keras.layers.Concatenate(name=f"{name}_concat")([shortcut, y])   # torch.cat((shortcut, x))
    return conv_norm_act(y, width, KERNEL, names=cna_names(f"{name}_conv_fusion"), cfg=cfg)


def _ir(x, out_ch, stride, expansion, prefix):
    """ByobNet's bottle block as configured by timm's _inverted_residual_block."""
    mid = make_divisible(x.shape[-1] * expansion)
    return inverted_residual(x, mid, out_ch, KERNEL, stride, prefix=prefix, cfg=SILU)


@application("mobilevit")
def mobilevit(inputs, widths, dims, expansion=4.0, stem_width=16, num_features=640, patch=2):
    """MobileViT v1 on NHWC input in [0, 1] (timm's mean 0, std 1).

    widths: the five stage widths; dims: the transformer widths of stages 3-5; expansion: the
    inverted residual blocks' ratio (timm `br`: 2 for xxs, 4 otherwise); num_features: the
    final 1x1 conv's width; patch: the unfold patch size (2 in every timm v1 model).
    """
    x = conv_norm_act(inputs, stem_width, KERNEL, 2, names=cna_names("stem"), cfg=SILU)
    reduction = 2
    for s, width in enumerate(widths, start=1):
        stride = 1 if s == 1 else 2
        reduction *= stride
        if s <= len(IR_DEPTHS):
            for b in range(IR_DEPTHS[s - 1]):
                x = _ir(x, width, stride if b == 0 else 1, expansion, f"stage{s}_block{b}")
        else:
            x = _ir(x, width, stride, expansion, f"stage{s}_block0")
            x = mobilevit_block(x, dims[s - 3], TRANSFORMER_DEPTHS[s - 3], patch,
                                name=f"stage{s}_block1")
        if s < len(widths):   # timm's last feature tap is final_conv, not stages.4
            x = stage_end(x, f"stage{s}", reduction)
    x = conv_norm_act(x, num_features, 1, names=cna_names("final_conv"), cfg=SILU)
    return stage_end(x, f"stage{len(widths)}", reduction)
