"""Vision Transformer (timm `vision_transformer.py`, torchvision `vision_transformer.py`), DeiT
(timm `deit.py`, with the distillation token) and DINOv2 (layer scale, register tokens). Targets
of recipes/vit.yaml.

patch embedding (Conv2d patch x patch, stride patch) -> prefix tokens (class [, distillation]
[, registers]) + absolute position embedding (zoo.layers.tokens.TokenEmbedding) -> `depth`
pre-norm transformer blocks -> LayerNorm `norm` -> the class token -> Linear. DeiT distilled has a
second Linear on the distillation token; in eval timm returns the mean of both heads.

The input size is free: the position embedding is stored for the grid of `img_size` and
resampled to the input's patch grid in the layer, as timm does with `dynamic_img_size=True`.

Every block output is a feature stage (`block<i>`, tokens (B, N, C) including the prefix tokens,
reduction = patch size, timm's `feature_info` for `blocks.<i>`).

Layer names: `patch_embed`, `embed` (tokens + positions), `block<i>_{norm1, attn_qkv, attn,
attn_proj, ls1, add1, norm2, mlp_fc1, mlp_act, mlp_fc2, ls2, add2}`, `block<i>`, `norm`,
`pool`, `predictions` [, `pool_dist`, `predictions_dist`, `average`].
"""
from __future__ import annotations

import keras

from zoo.layers.tokens import PadToMultiple, SelectToken, TokenEmbedding
from zoo.models.blocks import application, stage_end
from zoo.models.blocks_transformer import layer_norm, patch_embed, transformer_block


def _head(x, classes, name):
    # classes 0: timm's head is nn.Identity (DINOv2 ships without a classifier)
    return keras.layers.Dense(classes, name=name)(x) if classes else x


def _top(distilled):
    def top(x, classes, classifier_activation):
        cls = SelectToken(0, name="pool")(x)
        if not distilled:
            return keras.layers.Dense(classes, activation=classifier_activation,
                                      name="predictions")(cls) if classes else cls
        # timm VisionTransformerDistilled in eval: (head(x[:, 0]) + head_dist(x[:, 1])) / 2
        logits = keras.layers.Average(name="average")([
            _head(cls, classes, "predictions"),
            _head(SelectToken(1, name="pool_dist")(x), classes, "predictions_dist"),
        ])
        if classifier_activation is None:
            return logits
        return keras.layers.Activation(classifier_activation, name="predictions_act")(logits)
    return top


@application("vit")
def vit(inputs, depth, dim, heads, patch=16, img_size=224, mlp_ratio=4.0, qkv_bias=True,
        norm_eps=1e-6, distilled=False, reg_tokens=0, no_embed_class=False, ls_init=None,
        naming="timm", pad_to_patch=False):
    """ViT / DeiT on NHWC input normalised like the source.

    img_size: the (square) size the position embedding was trained for (its grid is
    img_size // patch); any input size runs, the embedding is resampled to it. distilled: DeiT's
    distillation token and second head. reg_tokens, no_embed_class, ls_init: register tokens,
    prefix tokens without position, layer scale (DINOv2 / DeiT-3 style). naming: "timm" or
    "torchvision" variable names of the token layer. pad_to_patch: zero-pad the input at the
    bottom/right to a multiple of the patch (timm `dynamic_img_pad=True`); otherwise a border
    smaller than a patch is dropped (torch's strided conv; timm without it refuses such sizes).
    Returns logits by default (classes=0: the normalised class token, timm's identity head);
    `include_top=False` ends at the normalised tokens (B, N, C), timm's `forward_features`.
    """
    x = PadToMultiple(patch, name="patch_pad")(inputs) if pad_to_patch else inputs
    x = patch_embed(x, dim, patch, "patch_embed")
    grid = img_size // patch
    x = TokenEmbedding((grid, grid), prefix=("cls", "dist") if distilled else ("cls",),
                       reg_tokens=reg_tokens, embed_prefix=not no_embed_class, naming=naming,
                       name="embed")(x)
    for i in range(depth):
        x = transformer_block(x, heads, mlp_ratio, name=f"block{i}", eps=norm_eps,
                              qkv_bias=qkv_bias, ls_init=ls_init)
        x = stage_end(x, f"block{i}", patch)
    return layer_norm(x, norm_eps, "norm"), _top(distilled)
