"""ConvNeXt (timm `convnext.py`, torchvision `convnext.py`) and ConvNeXt V2 (timm, `grn=True`).
Targets of recipes/convnext.yaml.

Both sources build the same network: a 4x4 stride-4 "patchify" conv + LayerNorm stem; four stages,
each (from the second on) opened by LayerNorm + 2x2 stride-2 conv; blocks of depthwise 7x7 conv ->
LayerNorm -> pointwise expansion x4 -> exact GELU -> [GRN] -> pointwise projection -> [layer
scale] + residual; the head pools, normalises (LayerNorm) and classifies.

Every LayerNorm of the torch model normalises over channels: timm/torchvision `LayerNorm2d`
permutes NCHW to channels-last for it, so in NHWC it is a plain LayerNormalization(axis=-1),
with the source's eps (1e-6; Keras' default 1e-3 would be wrong, the engine checks it).
`conv_mlp` (timm's small models) runs the MLP as 1x1 convs, otherwise as Linear layers; the
Keras layers follow (Conv2D 1x1 / Dense variables) so that each maps with its usual transform;
both run as one matmul with the GELU fused (zoo/layers/dense.py).

Layer names: `stem_conv`, `stem_norm`, `stage<s>_down_{norm,conv}`, `stage<s>_block<b>_{conv_dw,
norm,fc1,grn,fc2,ls}` (fc1 applies the GELU, torch's `act`), `head_norm`, `predictions` (stages
from 1, blocks from 0).
"""
from __future__ import annotations

import keras

from zoo.layers import dense
from zoo.layers.gelu import exact_gelu
from zoo.layers.grn import GlobalResponseNorm
from zoo.layers.layer_norm import LayerNormalization
from zoo.layers.layer_scale import LayerScale
from zoo.models.blocks import application, pooled_top, residual_add, stage_end

_LAYER_SCALES = (None, "timm", "torchvision")


def _norm(x, eps, name):
    # a LayerNormalization (same variables and config) with a cheaper TensorFlow graph
    return LayerNormalization(axis=-1, epsilon=eps, name=name)(x)


def _pointwise(x, units, conv_mlp, name, activation=None):
    # one matmul on the (B*H*W, C) view, the bias and an exact GELU fused into it by TensorFlow
    # (zoo/layers/dense.py); the variables are those of Conv2D 1x1 / Dense
    layer = dense.Conv2D(units, 1, activation=activation, name=name) if conv_mlp \
        else dense.Dense(units, activation=activation, name=name)
    return layer(x)


def _block(x, dim, *, mlp_ratio, conv_mlp, grn, layer_scale, ls_init, norm_eps, drop_path, name):
    shortcut = x
    # 7x7 depthwise, padding 3, stride 1: Keras "same" pads symmetrically here.
    y = keras.layers.DepthwiseConv2D(7, padding="same", use_bias=True, name=f"{name}_conv_dw")(x)
    y = _norm(y, norm_eps, f"{name}_norm")
    # nn.GELU / timm GELU are the exact erf form: fc1's own activation (no `act` layer).
    y = _pointwise(y, int(mlp_ratio * dim), conv_mlp, f"{name}_fc1", activation=exact_gelu)
    if grn:
        y = GlobalResponseNorm(epsilon=1e-6, name=f"{name}_grn")(y)
    y = _pointwise(y, dim, conv_mlp, f"{name}_fc2")
    if layer_scale:
        y = LayerScale(ls_init, layout=layer_scale, name=f"{name}_ls")(y)
    return residual_add(y, shortcut, name, drop_path)


@application("convnext")
def convnext(inputs, depths, dims, conv_mlp=False, grn=False, layer_scale="timm",
             ls_init_value=1e-6, mlp_ratio=4, norm_eps=1e-6, drop_path_rate=0.0):
    """ConvNeXt (V1: `layer_scale` "timm"/"torchvision") or ConvNeXt V2 (`grn=True`,
    `layer_scale=None`), NHWC input normalised like the source.

    `layer_scale` says which source's tensor layout the LayerScale variable mirrors (see
    zoo/layers/layer_scale.py); None for no layer scale. `drop_path_rate` is the stochastic depth
    of training (linear over blocks as in both sources); it has no effect at inference.
    Returns logits by default; `features_only=True` returns `stage1` ... `stage4`.
    `include_top=False` ends at the last stage (the head LayerNorm belongs to the top).
    """
    if layer_scale not in _LAYER_SCALES:
        raise ValueError(f"layer_scale must be one of {_LAYER_SCALES}, got {layer_scale!r}")
    if len(depths) != len(dims):
        raise ValueError(f"depths {depths} and dims {dims} must have the same length")
    total = sum(depths)
    x = keras.layers.Conv2D(dims[0], 4, strides=4, padding="valid", use_bias=True,
                            name="stem_conv")(inputs)
    x = _norm(x, norm_eps, "stem_norm")
    index = 0
    for s, (depth, dim) in enumerate(zip(depths, dims), start=1):
        if s > 1:
            x = _norm(x, norm_eps, f"stage{s}_down_norm")
            x = keras.layers.Conv2D(dim, 2, strides=2, padding="valid", use_bias=True,
                                    name=f"stage{s}_down_conv")(x)
        for b in range(depth):
            # torchvision: rate * i / (total - 1); timm: linspace(0, rate, total) -- the same.
            dpr = drop_path_rate * index / max(total - 1, 1)
            x = _block(x, dim, mlp_ratio=mlp_ratio, conv_mlp=conv_mlp, grn=grn,
                       layer_scale=layer_scale, ls_init=ls_init_value, norm_eps=norm_eps,
                       drop_path=dpr, name=f"stage{s}_block{b}")
            index += 1
        x = stage_end(x, f"stage{s}", 2 ** (s + 1))
    # timm NormMlpClassifierHead / torchvision classifier: pool -> LayerNorm -> Linear.
    return x, pooled_top(pre_logits=lambda y: _norm(y, norm_eps, "head_norm"))
