"""LeViT (timm `levit.py`, `LevitDistilled` as levit_128s; the token variant, not `_conv`). Target
of recipes/levit.yaml.

stem: four 3x3/2 convs, each followed by a BatchNorm (timm ConvNorm), hard-swish between them
(stride 16) -> tokens (B, r*r, C), row-major as torch's flatten(2).transpose(1, 2) -> stages:
  stage 1: `depth` LeViT blocks;
  stages 2, 3: a downsampling block (attention whose queries are every other token of the grid,
  timm AttentionDownsample, then a residual MLP) and `depth` LeViT blocks;
LeViT block: x + attn(x); x + mlp(x), no LayerNorm. Every Linear is a LinearNorm (Linear without
bias -> BatchNorm over the channels, folded into one at deployment by timm's `fuse`); the
attention's fused qkv is laid out per head (zoo.layers.levit.LevitAttention), its output goes
through hard-swish before the projection, and it adds a learned bias per head and relative
offset. Head: mean over the tokens -> BatchNorm -> Linear, twice (head, head_dist), averaged
(timm's LevitDistilled in eval).

The biases are tables over the r x r token grid (r = img_size // 16): the input size is fixed.
Stage outputs are tokens (B, N, C) (feature stages `stage1`..`stage3`, reductions 16, 32, 64:
timm's feature_info for `stages.<i>`).

Layer names (timm's with `_` for `.`): `stem_conv<k>_{linear, bn}`, `stem_act<k>`, `tokens`;
`stage<s>_down_attn_downsample_{kv, q_down, q_ln, proj_act, proj_ln}` and `..._attn_downsample`
(the attention), `stage<s>_down_mlp_{ln1, act, ln2}`; `stage<s>_block<j>_attn_{qkv, proj_act,
proj_ln}`, `stage<s>_block<j>_attn`, `stage<s>_block<j>_mlp_*`, each LinearNorm `<name>_linear`
and `<name>_bn`; `stage<s>`; `avg_pool`, `head_{bn, linear}`, `head_dist_{bn, linear}`,
`average`.
"""
from __future__ import annotations

import keras

from zoo.layers import dense
from zoo.layers.levit import GridSubsample, LevitAttention
from zoo.models.blocks import activation, application, conv2d, norm, stage_end
from zoo.models.blocks_transformer import fixed_input_size

STEM_STRIDE, KERNEL = 16, 3
# LevitDownsample's fixed ratios (timm LevitStage), and its subsampling stride
DOWN_ATTN_RATIO, DOWN_MLP_RATIO, DOWN_STRIDE = 4.0, 2.0, 2


def linear_norm(x, units, name):
    """timm LinearNorm: Linear without bias -> BatchNorm1d over the channels of (B*N, C), i.e.
    a BatchNormalization on the last axis of the tokens."""
    return norm(dense.Dense(units, use_bias=False, name=f"{name}_linear")(x), f"{name}_bn")


def levit_mlp(x, hidden, name, act):
    """timm LevitMlp: LinearNorm -> act -> LinearNorm back to the input width."""
    y = activation(linear_norm(x, hidden, f"{name}_ln1"), act, f"{name}_act")
    return linear_norm(y, x.shape[-1], f"{name}_ln2")


def levit_attention(x, heads, key_dim, attn_ratio, resolution, name, act):
    """timm levit Attention: fused qkv LinearNorm -> biased attention -> act -> LinearNorm."""
    val_dim = int(attn_ratio * key_dim)
    qkv = linear_norm(x, heads * (2 * key_dim + val_dim), f"{name}_qkv")
    y = LevitAttention(heads, key_dim, val_dim, resolution, name=name)(qkv)
    y = activation(y, act, f"{name}_proj_act")
    return linear_norm(y, x.shape[-1], f"{name}_proj_ln")


def levit_downsample(x, out_dim, key_dim, resolution, name, act):
    """timm LevitDownsample: AttentionDownsample (heads = in_dim // key_dim, queries from the
    grid subsampled by 2, no residual: the width and token count change) -> x + LevitMlp."""
    in_dim = x.shape[-1]
    heads, val_dim = in_dim // key_dim, int(DOWN_ATTN_RATIO * key_dim)
    p = f"{name}_attn_downsample"
    kv = linear_norm(x, heads * (key_dim + val_dim), f"{p}_kv")
    q = GridSubsample(resolution, DOWN_STRIDE, name=f"{p}_q_down")(x)
    q = linear_norm(q, heads * key_dim, f"{p}_q_ln")
    y = LevitAttention(heads, key_dim, val_dim, resolution, DOWN_STRIDE, name=p)([q, kv])
    y = activation(y, act, f"{p}_proj_act")
    y = linear_norm(y, out_dim, f"{p}_proj_ln")
    return keras.layers.Add(name=f"{name}_add")(
        [y, levit_mlp(y, int(out_dim * DOWN_MLP_RATIO), f"{name}_mlp", act)])


def levit_block(x, heads, key_dim, attn_ratio, mlp_ratio, resolution, name, act):
    x = keras.layers.Add(name=f"{name}_add1")(
        [x, levit_attention(x, heads, key_dim, attn_ratio, resolution, f"{name}_attn", act)])
    return keras.layers.Add(name=f"{name}_add2")(
        [x, levit_mlp(x, int(x.shape[-1] * mlp_ratio), f"{name}_mlp", act)])


def _stem(x, width, act):
    """timm Stem16: ConvNorm 3x3/2 (padding 1) four times, to width / 8, / 4, / 2, width."""
    widths = [width // 8, width // 4, width // 2, width]
    for k, w in enumerate(widths, start=1):
        x = conv2d(x, w, KERNEL, 2, name=f"stem_conv{k}_linear")
        x = norm(x, f"stem_conv{k}_bn")
        if k < len(widths):
            x = activation(x, act, f"stem_act{k}")
    return x


def _norm_linear(x, classes, name):
    """timm NormLinear: BatchNorm1d -> Linear (bias)."""
    return keras.layers.Dense(classes, name=f"{name}_linear")(norm(x, f"{name}_bn"))


def _top(distilled):
    def top(x, classes, classifier_activation):
        x = keras.layers.GlobalAveragePooling1D(name="avg_pool")(x)
        if not classes:   # timm's heads are nn.Identity
            return x
        logits = _norm_linear(x, classes, "head")
        if distilled:   # LevitDistilled in eval: (head(x) + head_dist(x)) / 2
            logits = keras.layers.Average(name="average")(
                [logits, _norm_linear(x, classes, "head_dist")])
        if classifier_activation is None:
            return logits
        return keras.layers.Activation(classifier_activation, name="predictions_act")(logits)
    return top


@fixed_input_size   # input_shape defaults to (img_size, img_size, 3)
@application("levit")
def levit(inputs, dims, depths, heads, key_dim=16, img_size=224, attn_ratio=2.0, mlp_ratio=2.0,
          act="hard_swish", distilled=True):
    """LeViT on NHWC input normalised like the source, img_size x img_size only.

    dims, depths, heads: per stage (timm's embed_dim, depth, num_heads); key_dim: the query/key
    width per head; attn_ratio: value width / key_dim in the blocks (the downsampling blocks use
    4); act: the activation everywhere (hard-swish in the published models). distilled: the
    second head, averaged with the first (every published LeViT). Returns logits by default;
    `include_top=False` ends at the last stage's tokens (B, N, C), timm's `forward_features`.
    """
    size = tuple(inputs.shape[1:3])
    if None not in size and size != (img_size, img_size):
        raise ValueError(f"levit: input {size[0]}x{size[1]}, but this model is built for "
                         f"{img_size}x{img_size} inputs: its attention biases are tables over the "
                         f"{img_size // STEM_STRIDE}x{img_size // STEM_STRIDE} token grid")
    resolution, reduction = img_size // STEM_STRIDE, STEM_STRIDE
    x = _stem(inputs, dims[0], act)
    x = keras.layers.Reshape((resolution * resolution, dims[0]), name="tokens")(x)
    for s, (dim, depth, n_heads) in enumerate(zip(dims, depths, heads), start=1):
        if s > 1:
            x = levit_downsample(x, dim, key_dim, resolution, f"stage{s}_down", act)
            resolution, reduction = (resolution - 1) // DOWN_STRIDE + 1, reduction * DOWN_STRIDE
        for j in range(depth):
            x = levit_block(x, n_heads, key_dim, attn_ratio, mlp_ratio, resolution,
                            f"stage{s}_block{j}", act)
        x = stage_end(x, f"stage{s}", reduction)
    return x, _top(distilled)
