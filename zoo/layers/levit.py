"""LeViT's attention (timm `levit.py`: `Attention`, `AttentionDownsample`) with its learned
attention biases, and the token-grid subsampling of its downsampling queries.

The biases are one learned value per head and per *relative offset* between a query and a key
position on the token grid: `attention_biases` (heads, r * r) is read through
`attention_bias_idxs` (N_q, N_k), index |dy| * r + |dx| (absolute offsets: the bias is symmetric
in both directions). timm rebuilds that index from the resolution (a non-persistent buffer, not in
the state_dict); `attention_bias_indices` rebuilds it here the same way, as a constant of the
graph, and the layer keeps only the learned table (same name and shape as timm's).
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops


def _grid(resolution, stride=1):
    """(2, n) row-major (y, x) coordinates of every stride-th position of an r x r grid (timm's
    torch.stack(ndgrid(arange, arange)).flatten(1))."""
    axis = np.arange(0, resolution, stride)
    ys, xs = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([ys.reshape(-1), xs.reshape(-1)])


def attention_bias_indices(resolution, stride=1):
    """timm's attention_bias_idxs: (N_q, N_k) int, N_k = r * r keys, N_q the queries (every
    stride-th row and column of the grid); entry |dy| * r + |dx| for their offset."""
    q, k = _grid(resolution, stride), _grid(resolution)
    offset = np.abs(q[:, :, None] - k[:, None, :])
    return (offset[0] * resolution + offset[1]).astype("int32")


@keras.saving.register_keras_serializable(package="zoo")
class LevitAttention(keras.layers.Layer):
    """softmax(q k^T * key_dim**-0.5 + bias) v per head, heads concatenated: (B, N_q,
    heads * val_dim). Weights: `attention_biases` (heads, resolution**2), timm's.

    stride 1 (timm `Attention`): the input is the fused `qkv` LinearNorm output, whose features
    are laid out per head -- (heads, [q key_dim | k key_dim | v val_dim]), timm's
    `view(B, N, heads, -1).split(...)` -- not (q|k|v, heads, head_dim) as ViT's fused qkv.
    stride 2 (timm `AttentionDownsample`): the input is [q (B, N_q, heads * key_dim) from the
    subsampled grid, kv (B, N, heads * (key_dim + val_dim)) laid out (heads, [k | v])].
    """

    def __init__(self, num_heads, key_dim, val_dim, resolution, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.key_dim, self.val_dim = int(num_heads), int(key_dim), int(val_dim)
        self.resolution, self.stride = int(resolution), int(stride)
        self.bias_indices = attention_bias_indices(self.resolution, self.stride)

    def build(self, input_shape):
        self.attention_biases = self.add_weight(
            name="attention_biases", shape=(self.num_heads, self.resolution ** 2),
            initializer="zeros")

    def _heads(self, x, width):
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1], self.num_heads, width))

    def call(self, inputs):
        kd, vd = self.key_dim, self.val_dim
        if self.stride == 1:
            qkv = self._heads(inputs, 2 * kd + vd)
            q, k, v = qkv[..., :kd], qkv[..., kd:2 * kd], qkv[..., 2 * kd:]
        else:
            q_in, kv_in = inputs
            q = self._heads(q_in, kd)
            kv = self._heads(kv_in, kd + vd)
            k, v = kv[..., :kd], kv[..., kd:]
        bias = ops.take(self.attention_biases, self.bias_indices, axis=1)   # (heads, N_q, N_k)
        logits = ops.einsum("bqhd,bkhd->bhqk", q, k) * (kd ** -0.5) + bias[None]
        out = ops.einsum("bhqk,bkhd->bqhd", ops.softmax(logits, axis=-1), v)
        shape = ops.shape(out)
        return ops.reshape(out, (shape[0], shape[1], self.num_heads * vd))

    def compute_output_shape(self, input_shape):
        n_q = (input_shape if self.stride == 1 else input_shape[0])[1]
        batch = (input_shape if self.stride == 1 else input_shape[0])[0]
        return (batch, n_q, self.num_heads * self.val_dim)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim,
                "val_dim": self.val_dim, "resolution": self.resolution, "stride": self.stride}


@keras.saving.register_keras_serializable(package="zoo")
class GridSubsample(keras.layers.Layer):
    """Tokens (B, r * r, C) of a row-major r x r grid -> every stride-th row and column,
    (B, ceil(r / stride)**2, C): timm's levit `Downsample` (use_pool=False), the queries of
    AttentionDownsample."""

    def __init__(self, resolution, stride=2, **kwargs):
        super().__init__(**kwargs)
        self.resolution, self.stride = int(resolution), int(stride)

    def call(self, x):
        r, s = self.resolution, self.stride
        grid = ops.reshape(x, (ops.shape(x)[0], r, r, x.shape[-1]))[:, ::s, ::s]
        return ops.reshape(grid, (ops.shape(x)[0], -1, x.shape[-1]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], (-(-self.resolution // self.stride)) ** 2, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "resolution": self.resolution, "stride": self.stride}
