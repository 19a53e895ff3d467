"""Cross Stage Partial networks (timm `cspnet.py`): CSPResNet(-50) and CSPDarkNet(-53), with timm's
`CrossStage` stages. Layer names are the targets of recipes/cspnet.yaml.

A cross stage (timm `CrossStage.forward`):

    x = conv_down(x)                      # 3x3 stride-2 conv-bn-act (absent at stride 1)
    x = conv_exp(x)                       # 1x1 conv-bn(-act unless cross_linear)
    xs, xb = x.split(exp // 2, dim=1)     # FIRST half: cross path, SECOND half: the blocks
    xb = conv_transition_b(blocks(xb))
    out = conv_transition(cat([xs, xb], dim=1))

Split and concatenation are on the channel axis, the last one in NHWC; which half runs through
the blocks and the concatenation order are invisible to the weight shapes (both halves have the
same width), so only parity can catch a swap (tests/test_family_cspnet.py swaps each).
Every conv is timm's `ConvNormAct`: conv (no bias, symmetric padding) + BatchNorm + activation
(LeakyReLU with torch's default slope 0.01 in both networks).
"""
from __future__ import annotations

import keras

from zoo.layers import TorchMaxPool2D
from zoo.layers.shuffle import ChannelSplit
from zoo.models.blocks import Settings, activation, application, conv_norm_act, residual_add, stage_end

_ACTS = ("leaky_relu", "relu", "silu")


def _conv_bn_act(x, filters, kernel, cfg, name, stride=1, act=True):
    # timm ConvNormAct named after its conv: `<name>`, `<name>_bn`, `<name>_act`
    return conv_norm_act(x, filters, kernel, stride, cfg=cfg,
                         names=(name, f"{name}_bn", f"{name}_act" if act else None))


def _split(x, name):
    """(cross half, block half): torch keeps the first chunk for the cross path."""
    xs, xb = ChannelSplit(2, name=f"{name}_split")(x)
    return xs, xb


def _merge(xs, xb, name):
    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([xs, xb])


def _bottleneck(x, out_ch, bottle_ratio, cfg, name):
    """timm cspnet `BottleneckBlock`: 1x1 -> 3x3 -> 1x1 (no act), add, act."""
    mid = int(round(out_ch * bottle_ratio))
    y = _conv_bn_act(x, mid, 1, cfg, f"{name}_conv1")
    y = _conv_bn_act(y, mid, 3, cfg, f"{name}_conv2")
    y = _conv_bn_act(y, out_ch, 1, cfg, f"{name}_conv3", act=False)
    return activation(residual_add(y, x, name), cfg.act, f"{name}_act")


def _dark(x, out_ch, bottle_ratio, cfg, name):
    """timm `DarkBlock`: 1x1 -> 3x3, both activated, then add (no act after the add)."""
    mid = int(round(out_ch * bottle_ratio))
    y = _conv_bn_act(x, mid, 1, cfg, f"{name}_conv1")
    y = _conv_bn_act(y, out_ch, 3, cfg, f"{name}_conv2")
    return residual_add(y, x, name)


def _cross_stage(x, in_ch, out_ch, depth, stride, expand_ratio, bottle_ratio, block_ratio,
                 cross_linear, down_growth, block_fn, cfg, name):
    exp_ch = int(round(out_ch * expand_ratio))
    block_out = int(round(out_ch * block_ratio))
    if stride != 1:
        x = _conv_bn_act(x, out_ch if down_growth else in_ch, 3, cfg, f"{name}_conv_down",
                         stride=stride)
    x = _conv_bn_act(x, exp_ch, 1, cfg, f"{name}_conv_exp", act=not cross_linear)
    xs, xb = _split(x, name)
    for b in range(depth):
        xb = block_fn(xb, block_out, bottle_ratio, cfg, f"{name}_block{b}")
    xb = _conv_bn_act(xb, exp_ch // 2, 1, cfg, f"{name}_conv_transition_b")
    return _conv_bn_act(_merge(xs, xb, name), out_ch, 1, cfg, f"{name}_conv_transition")


def _per_stage(value, n, what):
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) > n:
        raise ValueError(f"{what}: {len(values)} values for {n} stages")
    return values + values[-1:] * (n - len(values))   # timm's _pad_arg: repeat the last one


@application("cspnet")
def cspnet(inputs, depths, channels, stem_channels=(32,), stem_kernel=3, stem_stride=1,
           stem_pool=False, strides=2, expand_ratio=1.0, bottle_ratio=1.0, block_ratio=1.0,
           cross_linear=False, down_growth=False, block_type="bottle", act="leaky_relu",
           bn_eps=1e-5):
    """CSPNet with cross stages (timm `stage_type='csp'`), NHWC input normalised like the source.

    Per-stage arguments (strides, expand/bottle/block ratios) take one value or a list; a short
    list repeats its last value, as timm's config does. block_type: "bottle" (CSPResNet) or
    "dark" (CSPDarkNet). Returns logits by default; `features_only=True` returns one output per
    stage (`stage1` ... `stage<N>`).
    """
    if block_type not in ("bottle", "dark"):
        raise ValueError(f"block_type must be 'bottle' or 'dark', got {block_type!r}")
    if act not in _ACTS:
        raise ValueError(f"act must be one of {_ACTS}, got {act!r}")
    if stem_stride not in (1, 2, 4) or (stem_pool and stem_stride <= 2):
        raise ValueError(f"unsupported stem: stride {stem_stride}, pool {stem_pool}")
    n = len(depths)
    if len(channels) != n:
        raise ValueError(f"{len(channels)} channels for {n} stages")
    strides, expand_ratio, bottle_ratio, block_ratio = (
        _per_stage(v, n, w) for v, w in ((strides, "strides"), (expand_ratio, "expand_ratio"),
                                         (bottle_ratio, "bottle_ratio"),
                                         (block_ratio, "block_ratio")))
    cfg = Settings(act=act, bn_eps=float(bn_eps))
    block_fn = _bottleneck if block_type == "bottle" else _dark

    x = inputs
    stem_channels = list(stem_channels)
    for i, ch in enumerate(stem_channels, start=1):
        last = i == len(stem_channels)
        stride = 2 if (i == 1 and stem_stride > 1) or (last and stem_stride > 2 and not stem_pool) \
            else 1
        x = _conv_bn_act(x, ch, stem_kernel, cfg, f"stem_conv{i}", stride=stride)
    if stem_pool:
        # the pooled map is a LeakyReLU output, so it has negative values: torch's -inf padding
        x = TorchMaxPool2D(3, 2, padding=1, name="stem_pool")(x)

    in_ch = stem_channels[-1]
    reduction = stem_stride
    for s in range(1, n + 1):
        i = s - 1
        x = _cross_stage(x, in_ch, channels[i], depths[i], strides[i], expand_ratio[i],
                         bottle_ratio[i], block_ratio[i], cross_linear, down_growth, block_fn,
                         cfg, f"stage{s}")
        in_ch = channels[i]
        reduction *= strides[i]
        x = stage_end(x, f"stage{s}", reduction)
    return x
