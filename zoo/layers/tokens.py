"""Vision-transformer token layers: learned prefix tokens + absolute position embedding, resampled
to the input's patch grid the way timm does it, and the selection of one token for a head."""
from __future__ import annotations

import keras
from keras import ops

# PyTorch's bicubic kernels (aten UpSample): plain bicubic uses A = -0.75 with clamped taps; the
# antialiased one (antialias=True, timm's default in resample_abs_pos_embed) uses A = -0.5 (PIL's)
# with a support widened by the scale when shrinking, dropping out-of-range taps and renormalising.
_A_PLAIN = -0.75
_A_ANTIALIAS = -0.5


def _cubic(x, a):
    """The cubic convolution kernel at |x| (0 outside [0, 2))."""
    x = ops.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((x - 5.0) * x + 8.0) * x * a - 4.0 * a
    return ops.where(x < 1.0, near, ops.where(x < 2.0, far, ops.zeros_like(x)))


def bicubic_matrix(n_in: int, n_out, antialias: bool = True):
    """The (n_out, n_in) matrix M with `M @ v` = torch's 1-D bicubic resize of v
    (F.interpolate(mode="bicubic", align_corners=False, antialias=antialias)). Separable, so a
    2-D resize is M_h @ grid @ M_w^T. n_out may be a symbolic (dynamic) size; same sizes give
    exactly the identity (weights 1 and 0), so resampling always is harmless."""
    dtype = "float32"
    scale = ops.cast(n_in, dtype) / ops.cast(n_out, dtype)
    dst = ops.cast(ops.arange(n_out), dtype)[:, None]
    src = ops.cast(ops.arange(n_in), dtype)[None, :]
    if antialias:
        # aten _compute_indices_min_size_weights_aa: taps in [xmin, xmax), weights normalised
        widen = ops.maximum(scale, 1.0)
        support = 2.0 * widen
        center = scale * (dst + 0.5)
        xmin = ops.maximum(ops.floor(center - support + 0.5), 0.0)
        xmax = ops.minimum(ops.floor(center + support + 0.5), float(n_in))
        w = _cubic((src - center + 0.5) / widen, _A_ANTIALIAS)
        w = ops.where((src >= xmin) & (src < xmax), w, ops.zeros_like(w))
        return w / ops.sum(w, axis=1, keepdims=True)
    # plain: 4 taps around floor(src), indices clamped to the border (so they may repeat)
    pos = scale * (dst + 0.5) - 0.5
    base = ops.floor(pos)
    t = pos - base
    taps = ops.cast(ops.arange(-1, 3), dtype)[None, :]                     # (1, 4)
    weights = _cubic(t - taps, _A_PLAIN)                                   # (n_out, 4)
    index = ops.cast(ops.clip(base + taps, 0, n_in - 1), "int32")         # (n_out, 4)
    return ops.sum(ops.one_hot(index, n_in, dtype=dtype) * weights[..., None], axis=1)


def resample_grid(grid, out_h, out_w, antialias=True):
    """(h, w, C) position grid -> (out_h, out_w, C), torch's bicubic resize per axis."""
    m_h = bicubic_matrix(grid.shape[0], out_h, antialias)
    m_w = bicubic_matrix(grid.shape[1], out_w, antialias)
    return ops.einsum("jb,ibc->ijc", m_w, ops.einsum("ia,abc->ibc", m_h, grid))


@keras.saving.register_keras_serializable(package="zoo")
class PadToMultiple(keras.layers.Layer):
    """Zero-pads an NHWC image at the bottom and right to a multiple of `multiple` (timm
    PatchEmbed with `dynamic_img_pad=True`: `F.pad(x, (0, pad_w, 0, pad_h))`), so that every
    pixel lands in a patch; a no-op on sizes that are multiples already."""

    def __init__(self, multiple, **kwargs):
        super().__init__(**kwargs)
        self.multiple = int(multiple)

    def call(self, x):
        shape = ops.shape(x)
        pad_h, pad_w = (-shape[1]) % self.multiple, (-shape[2]) % self.multiple
        return ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        up = (lambda n: None if n is None else -(-n // self.multiple) * self.multiple)
        return (b, up(h), up(w), c)

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


# source -> (prefix token variable per kind, position embedding variable)
_NAMES = {
    "timm": ({"cls": "cls_token", "dist": "dist_token", "reg": "reg_token"}, "pos_embed"),
    "torchvision": ({"cls": "class_token"}, "pos_embedding"),
}


@keras.saving.register_keras_serializable(package="zoo")
class TokenEmbedding(keras.layers.Layer):
    """Patch grid (B, h, w, C) -> token sequence (B, prefix + h*w, C): learned prefix tokens
    (`prefix`: kinds in sequence order, e.g. ["cls", "dist"], and `reg_tokens` register tokens
    after them) concatenated before the patches, plus the absolute position embedding.

    The variables keep the source's names and shapes (timm `cls_token` (1, 1, C), `dist_token`,
    `reg_token` (1, R, C), `pos_embed` (1, P + h0*w0, C); torchvision `class_token`,
    `pos_embedding`) so the `identity` transform maps them. `grid` is (h0, w0), the patch grid the
    embedding was trained for; at another input size the patch part is resampled on the grid
    without its P prefix positions (bicubic, antialias as timm's resample_abs_pos_embed), which
    is what timm's `dynamic_img_size=True` computes. `embed_prefix` False: the prefix tokens carry
    no position (timm `no_embed_class`: DeiT-3, DINOv2 with registers), P = 0.
    """

    def __init__(self, grid, prefix=("cls",), reg_tokens=0, embed_prefix=True, naming="timm",
                 antialias=True, **kwargs):
        super().__init__(**kwargs)
        if naming not in _NAMES:
            raise ValueError(f"naming must be one of {sorted(_NAMES)}, got {naming!r}")
        unknown = [k for k in prefix if k not in _NAMES[naming][0]]
        if unknown or (reg_tokens and naming != "timm"):
            raise ValueError(f"{naming} has no prefix token kinds {unknown or ['reg']}")
        self.grid = tuple(int(g) for g in grid)
        self.prefix = tuple(prefix)
        self.reg_tokens = int(reg_tokens)
        self.embed_prefix = bool(embed_prefix)
        self.naming = naming
        self.antialias = bool(antialias)

    @property
    def num_prefix(self):
        return len(self.prefix) + self.reg_tokens

    def build(self, input_shape):
        dim = input_shape[-1]
        names, pos_name = _NAMES[self.naming]
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.tokens = [self.add_weight(name=names[k], shape=(1, 1, dim), initializer=init)
                       for k in self.prefix]
        if self.reg_tokens:
            self.tokens.append(self.add_weight(name=names["reg"], shape=(1, self.reg_tokens, dim),
                                               initializer=init))
        positions = (self.num_prefix if self.embed_prefix else 0) + self.grid[0] * self.grid[1]
        self.pos = self.add_weight(name=pos_name, shape=(1, positions, dim), initializer=init)

    def call(self, x):
        shape = ops.shape(x)
        batch, h, w, dim = shape[0], shape[1], shape[2], x.shape[-1]
        n_pos_prefix = self.num_prefix if self.embed_prefix else 0
        grid = ops.reshape(self.pos[0, n_pos_prefix:], (*self.grid, dim))
        patch_pos = ops.reshape(resample_grid(grid, h, w, self.antialias), (1, -1, dim))
        patches = ops.reshape(x, (batch, -1, dim))
        if not self.tokens:
            return patches + patch_pos
        prefix = ops.concatenate([ops.broadcast_to(t, (batch, t.shape[1], dim))
                                  for t in self.tokens], axis=1)
        if self.embed_prefix:   # timm's original order: concatenate, then add every position
            return ops.concatenate([prefix, patches], axis=1) + ops.concatenate(
                [self.pos[:, :n_pos_prefix], patch_pos], axis=1)
        return ops.concatenate([prefix, patches + patch_pos], axis=1)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        n = None if h is None or w is None else h * w + self.num_prefix
        return (b, n, c)

    def get_config(self):
        return {**super().get_config(), "grid": list(self.grid), "prefix": list(self.prefix),
                "reg_tokens": self.reg_tokens, "embed_prefix": self.embed_prefix,
                "naming": self.naming, "antialias": self.antialias}


@keras.saving.register_keras_serializable(package="zoo")
class SelectToken(keras.layers.Layer):
    """(B, T, C) -> (B, C): the token at `index` (timm global_pool="token": the class token at
    0, DeiT's distillation token at 1)."""

    def __init__(self, index=0, **kwargs):
        super().__init__(**kwargs)
        self.index = int(index)

    def call(self, x):
        return x[:, self.index]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "index": self.index}
