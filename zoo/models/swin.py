"""Swin Transformer (timm `swin_transformer.py`, torchvision `swin_transformer.py`) and Swin V2
(torchvision `swin_v2_*`). Target of recipes/swin.yaml.

patch embedding (Conv2d patch x patch, stride patch, then LayerNorm; NHWC from here on) ->
4 stages, each [patch merging 2x2 ->] `depths[s]` blocks alternating plain and shifted windows ->
LayerNorm `norm` -> global average pool -> Linear. Every map is NHWC (B, H, W, C), as in both
sources, and every stage output is a feature stage (`stage<s>`, reduction patch * 2**(s-1)).

Swin blocks are pre-norm (x + attn(norm1(x)), x + mlp(norm2(x))); Swin V2 blocks are post-norm
(x + norm1(attn(x)), x + norm2(mlp(x))), with cosine attention and a continuous position bias, and
V2's patch merging normalises after its Linear instead of before.

Window shifts: `source="timm"` fixes each block's shift from `img_size` as timm does (0 in a stage
whose grid fits in one window; the window shrinks to a smaller grid) and rolls before padding;
`source="torchvision"` pads, then rolls, dropping the shift at run time along an axis that is one
window (see zoo/layers/window_attention.py).

Layer names: `patch_embed`, `patch_embed_norm`, `stage<s>_downsample_{merge, norm, reduction}`,
`stage<s>_block<i>_{norm1, attn_partition, attn_qkv, attn, attn_proj, attn_merge, add1, norm2,
mlp_fc1, mlp_act, mlp_fc2, add2}`, `stage<s>`, `norm`, `avg_pool`, `predictions`.
"""
from __future__ import annotations

import keras

from zoo.layers import dense
from zoo.layers.window_attention import (
    KeyBiasFreeDense,
    PatchMerging2x2,
    WindowAttention,
    WindowMerge,
    WindowPartition,
)
from zoo.models.blocks import application, stage_end
from zoo.models.blocks_transformer import layer_norm, mlp, patch_embed

SOURCES = {"timm": "roll_pad", "torchvision": "pad_roll"}   # WindowPartition orders


def _window_and_shift(grid, window, shifted, source):
    """(window, shift) of one block. timm decides at build time from the grid of `img_size`:
    a grid no larger than the window takes the grid as window and no shift. torchvision keeps
    both and drops the shift at run time (WindowPartition)."""
    if source == "torchvision":
        return window, window // 2 if shifted else 0
    win = min(grid, window)
    return win, (win // 2 if shifted and grid > win else 0)


def _attention(x, heads, window, shift, source, v2, name):
    order = SOURCES[source]
    y = WindowPartition(window, shift, order, name=f"{name}_partition")(x)
    # V2's key bias never acts: torchvision zeroes that third of its stored qkv bias in forward,
    # timm stores q_bias and v_bias apart (on the attention module) and no qkv bias at all
    timm_v2 = v2 and source == "timm"
    qkv = KeyBiasFreeDense if v2 and source == "torchvision" else dense.Dense
    y = qkv(3 * x.shape[-1], use_bias=not timm_v2, name=f"{name}_qkv")(y)
    y = WindowAttention(heads, window, shift, order, cosine=v2, qv_bias=timm_v2, name=name)(y)
    y = dense.Dense(x.shape[-1], name=f"{name}_proj")(y)
    return WindowMerge(window, shift, order, name=f"{name}_merge")([y, x])


def _block(x, heads, window, shift, *, source, v2, mlp_ratio, eps, name):
    p = f"{name}_"
    hidden = int(x.shape[-1] * mlp_ratio)
    if v2:   # post-norm
        y = layer_norm(_attention(x, heads, window, shift, source, v2, p + "attn"), eps,
                       p + "norm1")
        x = keras.layers.Add(name=p + "add1")([x, y])
        y = layer_norm(mlp(x, hidden, p + "mlp"), eps, p + "norm2")
        return keras.layers.Add(name=p + "add2")([x, y])
    y = _attention(layer_norm(x, eps, p + "norm1"), heads, window, shift, source, v2, p + "attn")
    x = keras.layers.Add(name=p + "add1")([x, y])
    y = mlp(layer_norm(x, eps, p + "norm2"), hidden, p + "mlp")
    return keras.layers.Add(name=p + "add2")([x, y])


def _downsample(x, eps, v2, name):
    """Patch merging: 2x2 neighbours concatenated -> LayerNorm(4C) -> Linear(4C, 2C, no bias);
    V2: Linear first, then LayerNorm(2C)."""
    dim = x.shape[-1]
    x = PatchMerging2x2(name=f"{name}_merge")(x)
    reduction = dense.Dense(2 * dim, use_bias=False, name=f"{name}_reduction")
    if v2:
        return layer_norm(reduction(x), eps, f"{name}_norm")
    return reduction(layer_norm(x, eps, f"{name}_norm"))


@application("swin")
def swin(inputs, depths, heads, dim=96, window=7, patch=4, img_size=224, mlp_ratio=4.0,
         norm_eps=1e-5, v2=False, source="timm"):
    """Swin (v2=False) or Swin V2 (v2=True) on NHWC input normalised like the source.

    depths, heads: blocks and attention heads per stage; dim: width of stage 1 (doubled by each
    patch merging); window: window size; img_size: the size timm's model was built for (its
    per-stage grid decides window and shift, see `_window_and_shift`; torchvision ignores it).
    Any input size runs: maps are padded to whole windows inside each block, odd maps before
    patch merging. Returns logits; `include_top=False` ends at `norm`, (B, H/32, W/32, 8 dim).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}, got {source!r}")
    x = patch_embed(inputs, dim, patch, "patch_embed")
    x = layer_norm(x, norm_eps, "patch_embed_norm")
    grid = img_size // patch
    for s, (depth, n_heads) in enumerate(zip(depths, heads), start=1):
        if s > 1:
            x = _downsample(x, norm_eps, v2, f"stage{s}_downsample")
            grid = (grid + 1) // 2
        for i in range(depth):
            win, shift = _window_and_shift(grid, window, i % 2 == 1, source)
            x = _block(x, n_heads, win, shift, source=source, v2=v2, mlp_ratio=mlp_ratio,
                       eps=norm_eps, name=f"stage{s}_block{i}")
        x = stage_end(x, f"stage{s}", patch * 2 ** (s - 1))
    return layer_norm(x, norm_eps, "norm")
