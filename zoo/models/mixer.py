"""MLP-Mixer (timm `mlp_mixer.py`, `MlpMixer` with `MixerBlock`, as mixer_b16_224). Target of
recipes/mixer.yaml.

patch embedding (Conv2d patch x patch, stride patch) -> tokens (B, h*w, C), row-major as torch's
flatten(2).transpose(1, 2) -> `depth` blocks of
  token mixing:   x + T(mlp_tokens(T(norm1(x))))   T: swap the token and channel axes
  channel mixing: x + mlp_channels(norm2(x))
-> LayerNorm `norm` -> mean over the tokens -> Linear. LayerNorm eps 1e-6, exact GELU.

The token-mixing MLP is a Dense over the patch axis: its weights are per patch position, so the
input size is fixed (h*w tokens; timm's pretrained_cfg says fixed_input_size). Every block output
is a feature stage (`block<i>`, tokens (B, h*w, C), reduction = patch size, timm's
`feature_info` for `blocks.<i>`).

Layer names: `patch_embed`, `tokens`, `block<i>_{norm1, tokens_t, mlp_tokens_fc1, mlp_tokens_fc2,
tokens_back, add1, norm2, mlp_channels_fc1, mlp_channels_fc2, add2}` (each fc1 applies the exact
GELU, torch's `act`), `block<i>`, `norm`, `pool`, `predictions`.
"""
from __future__ import annotations

import keras

from zoo.layers.token_ops import PatchTokenMean
from zoo.models.blocks import application, stage_end
from zoo.models.blocks_transformer import fixed_input_size, layer_norm, mlp, patch_embed


def mixer_block(x, tokens_dim, channels_dim, *, name, eps=1e-6):
    """timm MixerBlock. The token MLP acts on the token axis: Keras' Dense acts on the last axis,
    so the tokens are transposed to (B, C, N) explicitly before it and back after it, as timm's
    `.transpose(1, 2)` does; its fc1 kernel is (N, tokens_dim)."""
    p = f"{name}_"
    y = keras.layers.Permute((2, 1), name=p + "tokens_t")(layer_norm(x, eps, p + "norm1"))
    y = mlp(y, tokens_dim, p + "mlp_tokens")
    y = keras.layers.Permute((2, 1), name=p + "tokens_back")(y)
    x = keras.layers.Add(name=p + "add1")([x, y])
    y = mlp(layer_norm(x, eps, p + "norm2"), channels_dim, p + "mlp_channels")
    return keras.layers.Add(name=p + "add2")([x, y])


def _top(x, classes, classifier_activation):
    x = PatchTokenMean(0, name="pool")(x)
    if not classes:   # timm's head is nn.Identity
        return x
    return keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)


@fixed_input_size
@application("mixer")
def mixer(inputs, depth, dim, patch=16, img_size=224, mlp_ratio=(0.5, 4.0), norm_eps=1e-6):
    """MLP-Mixer on NHWC input normalised like the source, at img_size x img_size only (the
    token MLP's width is the number of patches). mlp_ratio: (token, channel) hidden widths as
    multiples of dim, timm's int(r * dim). Returns logits by default; `include_top=False` ends
    at the normalised tokens (B, h*w, C), timm's `forward_features`."""
    size = tuple(inputs.shape[1:3])
    if size != (img_size, img_size):
        raise ValueError(f"mixer: input {size[0]}x{size[1]}, but this model is built for "
                         f"{img_size}x{img_size} inputs: the token-mixing MLP has one weight per "
                         f"patch position of the {img_size // patch}x{img_size // patch} grid")
    tokens_dim, channels_dim = (int(r * dim) for r in mlp_ratio)
    x = patch_embed(inputs, dim, patch, "patch_embed")
    x = keras.layers.Reshape((-1, dim), name="tokens")(x)
    for i in range(depth):
        x = mixer_block(x, tokens_dim, channels_dim, name=f"block{i}", eps=norm_eps)
        x = stage_end(x, f"block{i}", patch)
    return layer_norm(x, norm_eps, "norm"), _top
