"""MaxViT (timm `maxxvit.py` MaxxVit with 'M' blocks, torchvision `maxvit.py`). Target of
recipes/maxvit.yaml.

stem (3x3 conv stride 2 -> BN -> GELU -> 3x3 conv) -> 4 stages of MaxViT blocks -> head
(global average pool -> LayerNorm -> Linear -> tanh -> Linear). Each block is
    MBConv: pre-norm BN -> 1x1 conv -> BN -> GELU -> depthwise 3x3 (stride 2 in a stage's first
            block) -> BN -> GELU -> squeeze-excite (SiLU) -> 1x1 conv, + shortcut (average pool
            and a 1x1 conv when the block strides)
    block attention: x + attn(partition into p x p windows (norm1(x))); x + mlp(norm2(x))
    grid attention:  the same on a p x p grid dilated over the whole map
with `zoo.layers.partition_attention` (relative position bias per window, table in the source's
layout, index rebuilt from the window).

The partition size p is fixed by the checkpoint (timm: img_size // 32, i.e. 7 at 224; its bias
tables are (2p-1)-wide), so every stage's map must be a multiple of p: square inputs that are
multiples of 32 * p (224, 448, ...). Neither source pads; neither does this builder. At those sizes
every map entering a strided block is even, where timm's TF-"SAME" 2x2 average pool pads nothing.

The two sources differ in details the builder arguments select (recipes/maxvit.yaml):
timm `_tf_` weights (ported from TensorFlow) use TF "SAME" padding, tanh-approximated GELU, BN
momentum 0.1, a 2x2 average pool in the strided shortcut, attention scaled by head_dim^-0.5 and
the "tf" bias-table layout; torchvision uses torch padding, exact GELU, BN momentum 0.01, a 3x3
average pool (padding 1, counted) and a 1x1 conv in every strided shortcut, scales attention by
the block width^-0.5 (not head_dim), uses the "swin" table layout, and has no bias in its last
Linear nor in the stem's first conv.

Layer names: `stem_conv1`, `stem_norm1`, `stem_act1`, `stem_conv2`; per block
`stage<s>_block<b>_` + MBConv `{pre_norm, conv1_1x1, norm1, act1, conv2_kxk, norm2, act2, se_*,
conv3_1x1, shortcut_pool, shortcut_expand, add}` and, for `attn_block` / `attn_grid`,
`<kind>_{norm1, partition, attn_qkv, attn, attn_proj, unpartition, add1, norm2, mlp_fc1,
mlp_act, mlp_fc2, add2}` (mlp_act only for the tanh GELU; fc1 applies the exact one);
`head_norm`, `head_pre_logits`, `head_pre_logits_act`, `predictions`.
Feature stages: `stem` (reduction 2), `stage1`..`stage4` (4 .. 32), timm's feature_info.
"""
from __future__ import annotations

import keras

from zoo.layers import dense
from zoo.layers.gelu import GELU
from zoo.layers.partition_attention import Partition, PartitionAttention, Unpartition
from zoo.models.blocks import (
    SE_FC,
    TF_SAME,
    Settings,
    application,
    conv2d,
    depthwise,
    make_divisible,
    norm,
    squeeze_excite,
    stage_end,
)
from zoo.models.blocks_transformer import layer_norm, mlp

# MaxViT's attention heads are always 32 wide (timm dim_head, torchvision head_dim)
HEAD_DIM = 32
SCALES = ("head_dim", "width")
SHORTCUT_POOLS = (2, 3)


def _gelu(x, approximate, name):
    return GELU(approximate, name=name)(x)


def _mbconv(x, out_chs, stride, cfg, *, gelu_tanh, shortcut_pool, strided_shortcut_conv, name):
    """timm MbConvBlock / torchvision MBConv (pre-norm, expansion 4 of the output width, SE 1/4
    of the output width). The shortcut's 1x1 conv: timm's only where the width changes,
    torchvision's also in every strided block (stage 1: 64 -> 64)."""
    in_chs = x.shape[-1]
    shortcut = x
    if stride == 2:
        if shortcut_pool == 3:   # torchvision: AvgPool2d(3, 2, padding=1), padding counted
            shortcut = keras.layers.ZeroPadding2D(1, name=f"{name}_shortcut_pad")(shortcut)
        shortcut = keras.layers.AveragePooling2D(shortcut_pool, 2, padding="valid",
                                                 name=f"{name}_shortcut_pool")(shortcut)
    if in_chs != out_chs or (stride == 2 and strided_shortcut_conv):
        shortcut = keras.layers.Conv2D(out_chs, 1, use_bias=True,
                                       name=f"{name}_shortcut_expand")(shortcut)
    mid = make_divisible(out_chs * 4)
    y = norm(x, f"{name}_pre_norm", cfg)
    y = norm(conv2d(y, mid, 1, name=f"{name}_conv1_1x1", cfg=cfg), f"{name}_norm1", cfg)
    y = _gelu(y, gelu_tanh, f"{name}_act1")
    y = norm(depthwise(y, 3, stride, name=f"{name}_conv2_kxk", cfg=cfg), f"{name}_norm2", cfg)
    y = _gelu(y, gelu_tanh, f"{name}_act2")
    y = squeeze_excite(y, out_chs // 4, prefix=name, act="silu", naming=SE_FC)
    y = conv2d(y, out_chs, 1, use_bias=True, name=f"{name}_conv3_1x1", cfg=cfg)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def _partition_attention(x, mode, window, *, ln_eps, gelu_tanh, scale, bias_layout, name):
    """Pre-norm attention within `mode` windows, then a pre-norm MLP (ratio 4), both residual."""
    dim = x.shape[-1]
    if dim % HEAD_DIM:
        raise ValueError(f"{name}: width {dim} is not a multiple of the head width {HEAD_DIM}")
    y = layer_norm(x, ln_eps, f"{name}_norm1")
    y = Partition(window, mode, name=f"{name}_partition")(y)
    y = dense.Dense(3 * dim, name=f"{name}_attn_qkv")(y)
    y = PartitionAttention(dim // HEAD_DIM, window, bias_layout,
                        scale=dim ** -0.5 if scale == "width" else None, name=f"{name}_attn")(y)
    y = dense.Dense(dim, name=f"{name}_attn_proj")(y)
    y = Unpartition(window, mode, name=f"{name}_unpartition")(y)
    x = keras.layers.Add(name=f"{name}_add1")([x, y])
    y = mlp(layer_norm(x, ln_eps, f"{name}_norm2"), 4 * dim, f"{name}_mlp",
            act="gelu_tanh" if gelu_tanh else "gelu")
    return keras.layers.Add(name=f"{name}_add2")([x, y])


def _top(ln_eps, head_bias):
    def top(x, classes, classifier_activation):
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.LayerNormalization(epsilon=ln_eps, name="head_norm")(x)
        x = keras.layers.Dense(x.shape[-1], name="head_pre_logits")(x)
        x = keras.layers.Activation("tanh", name="head_pre_logits_act")(x)
        return keras.layers.Dense(classes, use_bias=head_bias, activation=classifier_activation,
                                  name="predictions")(x)
    return top


@application("maxvit")
def maxvit(inputs, depths=(2, 2, 5, 2), dims=(64, 128, 256, 512), stem_width=64, window=7,
           tf_padding=True, gelu_tanh=True, bn_eps=1e-3, bn_momentum=0.1, ln_eps=1e-5,
           shortcut_pool=2, strided_shortcut_conv=False, scale="head_dim", bias_layout="tf",
           stem_bias=True, head_bias=True):
    """MaxViT on NHWC input normalised like the source; defaults are timm's maxvit_tiny_tf_224.

    window: the block and grid partition size (both), which the checkpoint's bias tables fix.
    tf_padding, gelu_tanh, bn_momentum, shortcut_pool (2 or 3), strided_shortcut_conv, scale
    ("head_dim" or "width"), bias_layout ("tf" or "swin"), stem_bias, head_bias: the source's
    flavour (module docstring).
    Returns logits; `include_top=False` ends at the last stage's map (timm's forward_features).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if shortcut_pool not in SHORTCUT_POOLS:
        raise ValueError(f"shortcut_pool must be one of {SHORTCUT_POOLS}, got {shortcut_pool!r}")
    cfg = Settings(bn_eps=float(bn_eps), bn_momentum=float(bn_momentum), act="gelu",
                   padding=TF_SAME if tf_padding else None)
    x = conv2d(inputs, stem_width, 3, 2, use_bias=stem_bias, name="stem_conv1", cfg=cfg)
    x = _gelu(norm(x, "stem_norm1", cfg), gelu_tanh, "stem_act1")
    x = conv2d(x, stem_width, 3, use_bias=True, name="stem_conv2", cfg=cfg)
    x = stage_end(x, "stem", 2)
    attn = dict(ln_eps=ln_eps, gelu_tanh=gelu_tanh, scale=scale, bias_layout=bias_layout)
    reduction = 2
    for s, (depth, dim) in enumerate(zip(depths, dims), start=1):
        for b in range(depth):
            name = f"stage{s}_block{b}"
            x = _mbconv(x, dim, 2 if b == 0 else 1, cfg, gelu_tanh=gelu_tanh,
                        shortcut_pool=shortcut_pool, strided_shortcut_conv=strided_shortcut_conv,
                        name=f"{name}_conv")
            x = _partition_attention(x, "block", window, name=f"{name}_attn_block", **attn)
            x = _partition_attention(x, "grid", window, name=f"{name}_attn_grid", **attn)
        reduction *= 2
        x = stage_end(x, f"stage{s}", reduction)
    return x, _top(ln_eps, head_bias)
