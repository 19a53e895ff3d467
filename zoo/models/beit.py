"""BEiT (timm `beit.py`, `Beit` with `use_rel_pos_bias=True, use_abs_pos_emb=False`, as
beit_base_patch16_224). Target of recipes/beit.yaml.

patch embedding (Conv2d patch x patch, stride patch) -> class token (zoo.layers.token_ops.
ClassToken; no absolute position embedding) -> `depth` pre-norm blocks whose attention adds a
learned relative position bias per head and q/v biases without a k bias
(zoo.layers.relative_position.RelPosAttention), each residual branch scaled per channel
(gamma_1 / gamma_2) -> mean of the patch tokens -> LayerNorm `fc_norm` -> Linear.

The input size is fixed: every block's bias table and its index are laid out for the patch grid
of `img_size` (timm's pretrained_cfg says fixed_input_size; timm resizes the table only when it
builds a new model for another img_size). Every block output is a feature stage (`block<i>`,
tokens (B, 1 + h*w, C), reduction = patch size, timm's `feature_info` for `blocks.<i>`).

Layer names: `patch_embed`, `embed`, `block<i>_{norm1, attn_qkv, attn_attn, attn_proj, add1,
norm2, mlp_fc1, mlp_act, mlp_fc2, add2}`, `block<i>`, `pool`, `fc_norm`, `predictions`. Variable
paths follow timm's modules (zoo.layers.grouping): `block<i>/gamma_{1,2}` (timm `blocks.<i>`)
and `block<i>_attn_proj/{q_bias, v_bias, relative_position_bias_table}` (timm
`blocks.<i>.attn`), next to the proj Dense's own kernel and bias.
"""
from __future__ import annotations

import keras

from zoo.layers.relative_position import RelPosAttention
from zoo.layers.token_ops import ClassToken, PatchTokenMean, ScaledResidual
from zoo.models.blocks import application, stage_end
from zoo.models.blocks_transformer import attention, fixed_input_size, layer_norm, mlp, patch_embed


def _residual(x, y, ls_init, variable, group, name):
    if ls_init is None:   # timm init_values=None: no gamma at all
        return keras.layers.Add(name=name)([x, y])
    return ScaledResidual(ls_init, variable, group=group, name=name)([x, y])


def beit_block(x, heads, mlp_ratio, grid, *, name, eps=1e-6, ls_init=0.1):
    """timm Beit `Block`: x + gamma_1 * attn(norm1(x)); x + gamma_2 * mlp(norm2(x))."""
    p = f"{name}_"
    y = attention(layer_norm(x, eps, p + "norm1"), heads, p + "attn", qkv_bias=False,
                  core=lambda n: RelPosAttention(heads, grid, group=p + "attn_proj", name=n))
    x = _residual(x, y, ls_init, "gamma_1", name, p + "add1")
    y = mlp(layer_norm(x, eps, p + "norm2"), int(x.shape[-1] * mlp_ratio), p + "mlp")
    return _residual(x, y, ls_init, "gamma_2", name, p + "add2")


def _top(eps):
    def top(x, classes, classifier_activation):
        x = layer_norm(PatchTokenMean(1, name="pool")(x), eps, "fc_norm")
        if not classes:   # timm's head is nn.Identity: the pooled, normalised features
            return x
        return keras.layers.Dense(classes, activation=classifier_activation,
                                  name="predictions")(x)
    return top


@fixed_input_size
@application("beit")
def beit(inputs, depth, dim, heads, patch=16, img_size=224, mlp_ratio=4.0, norm_eps=1e-6,
         ls_init=0.1):
    """BEiT on NHWC input normalised like the source, at img_size x img_size only.

    ls_init: timm's init_values (layer scale gamma_1/gamma_2; None for none). Returns logits by
    default; `include_top=False` ends at the last block's tokens (B, 1 + h*w, C), timm's
    `forward_features` (its `norm` is the identity when fc_norm is used).
    """
    size = tuple(inputs.shape[1:3])
    if size != (img_size, img_size):
        raise ValueError(f"beit: input {size[0]}x{size[1]}, but this model is built for "
                         f"{img_size}x{img_size} inputs: each block's relative position bias "
                         f"table is laid out for the {img_size // patch}x{img_size // patch} "
                         f"patch grid")
    grid = (img_size // patch,) * 2
    x = ClassToken(name="embed")(patch_embed(inputs, dim, patch, "patch_embed"))
    for i in range(depth):
        x = beit_block(x, heads, mlp_ratio, grid, name=f"block{i}", eps=norm_eps,
                       ls_init=ls_init)
        x = stage_end(x, f"block{i}", patch)
    return x, _top(norm_eps)
