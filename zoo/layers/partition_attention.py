"""MaxViT's multi-axis attention (timm `maxxvit.py`): the block and grid partitions of an NHWC
map into windows of tokens, their inverses, and multi-head self-attention with a learned
relative position bias over one window.

Every op is a reshape / transpose / gather on whole tensors: no Python loop over windows or heads
in `call`, so the backend sees one batched attention per layer.

Swin's layers (zoo.layers.window_attention) are close but not the same: its partition shifts and
pads and its merge needs the original map, its attention knows one table layout and the
head_dim scale only. MaxViT needs no shift or padding, a grid mode, timm's TF table layout and
torchvision's width scale; the relative position index is Swin's (`bias_index`).
"""
from __future__ import annotations

import keras
from keras import ops

from zoo.layers.window_attention import relative_position_index

MODES = ("block", "grid")

# How the source stores the bias table and which relative offset indexes it; see `bias_index`.
#   "tf":   timm RelPosBiasTf (the `_tf_` MaxViTs ported from TensorFlow): (heads, 2h-1, 2w-1),
#           offset key - query; timm rebuilds it with one-hot lookups (non-persistent buffers).
#   "swin": timm RelPosBias, torchvision MaxViT/Swin: ((2h-1) * (2w-1), heads), offset
#           query - key, with the derived `relative_position_index` buffer.
BIAS_LAYOUTS = ("tf", "swin")


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _check_divisible(shape, size, what):
    for axis, n in zip(("height", "width"), shape[1:3]):
        if n is not None and n % size:
            raise ValueError(f"{what}: map {axis} {n} is not a multiple of the partition size "
                             f"{size} (MaxViT needs every stage's map divisible by its window)")


@keras.saving.register_keras_serializable(package="zoo")
class Partition(keras.layers.Layer):
    """(B, H, W, C) -> (B, H/p, W/p, p*p, C): windows of p x p tokens, tokens row-major.

    mode "block" (timm window_partition): window (a, b) holds pixels (a*p + i, b*p + j), a
    contiguous p x p block. mode "grid" (timm grid_partition): window (a, b) holds pixels
    (i*H/p + a, j*W/p + b), a p x p grid dilated over the whole map. The windows stay on their
    own axes (not folded into the batch), so `Unpartition` needs no other input.
    """

    def __init__(self, size, mode="block", **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.mode = _check_mode(mode)

    def call(self, x):
        b, h, w, c = ops.shape(x)
        p = self.size
        if self.mode == "block":
            x = ops.reshape(x, (b, h // p, p, w // p, p, c))
            x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        else:
            x = ops.reshape(x, (b, p, h // p, p, w // p, c))
            x = ops.transpose(x, (0, 2, 4, 1, 3, 5))
        return ops.reshape(x, (b, h // p, w // p, p * p, c))

    def build(self, input_shape):
        # here rather than in call(): Keras passes a build error on as it is (the message reaches
        # a refused conversion), while one from call() comes wrapped in its call context
        _check_divisible(input_shape, self.size, self.name)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        p = self.size
        return (b, None if h is None else h // p, None if w is None else w // p, p * p, c)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "mode": self.mode}


@keras.saving.register_keras_serializable(package="zoo")
class Unpartition(keras.layers.Layer):
    """The inverse of `Partition` with the same size and mode: (B, A, B', p*p, C) -> the map."""

    def __init__(self, size, mode="block", **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.mode = _check_mode(mode)

    def call(self, x):
        b, na, nb, _n, c = ops.shape(x)
        p = self.size
        x = ops.reshape(x, (b, na, nb, p, p, c))
        # block: (b, a, b', i, j) -> (b, a, i, b', j); grid: -> (b, i, a, j, b')
        perm = (0, 1, 3, 2, 4, 5) if self.mode == "block" else (0, 3, 1, 4, 2, 5)
        return ops.reshape(ops.transpose(x, perm), (b, na * p, nb * p, c))

    def compute_output_shape(self, input_shape):
        b, na, nb, _n, c = input_shape
        p = self.size
        return (b, None if na is None else na * p, None if nb is None else nb * p, c)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "mode": self.mode}


def bias_index(window, layout):
    """(N, N) int index, N = h*w, into the flattened bias table: entry [q, k] is the table cell
    of query token q = (qi, qj) and key token k = (ki, kj) of one window (tokens row-major).

    "swin": table ((2h-1)(2w-1), heads), cell (qi-ki+h-1) * (2w-1) + (qj-kj+w-1): torch's
    `relative_position_index` buffer (zoo.layers.window_attention rebuilds it for Swin).
    "tf": table (heads, 2h-1, 2w-1) flattened per head, cell (ki-qi+h-1, kj-qj+w-1) as timm's
    one-hot lookups reindex it (`reindex_2d_einsum_lookup`): the same numbers for the opposite
    offset, i.e. the transpose of the swin index.
    """
    if layout not in BIAS_LAYOUTS:
        raise ValueError(f"layout must be one of {BIAS_LAYOUTS}, got {layout!r}")
    index = relative_position_index(window)
    return index.T if layout == "tf" else index


@keras.saving.register_keras_serializable(package="zoo")
class PartitionAttention(keras.layers.Layer):
    """Multi-head self-attention inside windows with a learned relative position bias:
    (..., N, 3 * heads * head_dim) -> (..., N, heads * head_dim), N = window[0] * window[1],
    softmax(scale * q k^T + bias) v per window and head; scale None is head_dim^-0.5 (timm),
    torchvision's MaxViT scales by its block width^-0.5 instead.

    The input is the output of one Dense holding the source's fused qkv Linear, whose features
    are ordered (q|k|v, heads, head_dim): timm's AttentionCl with head_first=False (every `_tf_`
    MaxViT) reshapes (B, N, 3, heads, head_dim), and torchvision's MaxViT chunks q|k|v and then
    splits heads. (timm's head_first=True models interleave (heads, q|k|v, head_dim) instead,
    and are not handled.) The only weight is the bias table, named and shaped as the source's
    tensor (`layout`, see BIAS_LAYOUTS) so that the `identity` transform maps it; the index that
    spreads it over (query, key) pairs is derived from the window, as torch derives its buffer.
    """

    def __init__(self, num_heads, window, layout="tf", scale=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.scale = None if scale is None else float(scale)
        self.window = tuple(int(s) for s in (window if isinstance(window, (list, tuple))
                                             else (window, window)))
        self.layout = layout
        self.index = bias_index(self.window, layout).reshape(-1)

    def build(self, input_shape):
        h, w = self.window
        shape = ((self.num_heads, 2 * h - 1, 2 * w - 1) if self.layout == "tf"
                 else ((2 * h - 1) * (2 * w - 1), self.num_heads))
        self.table = self.add_weight(name="relative_position_bias_table", shape=shape,
                                     initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def bias(self):
        """(heads, N, N): the bias added to the attention logits of every window."""
        n = self.window[0] * self.window[1]
        if self.layout == "tf":
            flat = ops.reshape(self.table, (self.num_heads, -1))
            return ops.reshape(ops.take(flat, self.index, axis=1), (self.num_heads, n, n))
        gathered = ops.take(self.table, self.index, axis=0)   # (N*N, heads)
        return ops.transpose(ops.reshape(gathered, (n, n, self.num_heads)), (2, 0, 1))

    def call(self, qkv):
        shape = ops.shape(qkv)
        n, dim = shape[-2], qkv.shape[-1] // 3
        # every leading axis (batch, window rows, window columns) becomes one batch axis
        x = ops.reshape(qkv, (-1, n, 3, self.num_heads, dim // self.num_heads))
        out = ops.dot_product_attention(x[:, :, 0], x[:, :, 1], x[:, :, 2],
                                        bias=self.bias()[None], scale=self.scale)
        return ops.reshape(out, (*shape[:-1], dim))

    def compute_output_shape(self, input_shape):
        n = self.window[0] * self.window[1]
        if input_shape[-2] not in (None, n):
            raise ValueError(f"{self.name}: windows of {input_shape[-2]} tokens, expected {n}")
        return (*input_shape[:-1], input_shape[-1] // 3)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "window": list(self.window),
                "layout": self.layout, "scale": self.scale}
