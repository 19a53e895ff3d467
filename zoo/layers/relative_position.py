"""BEiT attention: a learned relative position bias per head, and q/v biases without a k bias."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from zoo.layers.attention import fused_attention
from zoo.layers.grouping import add_weight


def relative_position_index(grid) -> np.ndarray:
    """The (h*w + 1, h*w + 1) int32 index into BEiT's bias table (timm's non-persistent buffer
    `relative_position_index`, rebuilt here rather than converted).

    Patch i -> patch j reads entry (dy + h - 1) * (2w - 1) + (dx + w - 1), dy/dx = i's row/column
    minus j's (row-major patches, as the patch grid is flattened); the class token (position 0)
    has three entries of its own after those (2h - 1)(2w - 1): class -> patch, patch -> class,
    class -> class."""
    h, w = (int(g) for g in grid)
    rows, cols = np.divmod(np.arange(h * w), w)
    distance = (2 * h - 1) * (2 * w - 1)
    index = np.empty((h * w + 1,) * 2, np.int32)
    index[1:, 1:] = ((rows[:, None] - rows[None, :] + h - 1) * (2 * w - 1)
                     + cols[:, None] - cols[None, :] + w - 1)
    index[0, :] = distance          # class token -> any (its row, set before the column)
    index[:, 0] = distance + 1      # any -> class token
    index[0, 0] = distance + 2
    return index


@keras.saving.register_keras_serializable(package="zoo")
class RelPosAttention(keras.layers.Layer):
    """(B, 1 + h*w, 3C) -> (B, 1 + h*w, C): BEiT's attention core on the output of a bias-free
    fused q/k/v Dense (timm's `attn.qkv`, whose bias is not a Linear bias).

    Variables keep timm's `Attention` names and shapes so `identity` maps them: `q_bias` (C,),
    `v_bias` (C,) (timm adds cat(q_bias, zeros, v_bias): k has no bias; its zero `k_bias` buffer
    is not a weight), and `relative_position_bias_table` ((2h-1)(2w-1) + 3, heads), gathered by
    `relative_position_index(grid)` into a (heads, N, N) bias added to the attention logits.

    `grid` is the patch grid the table is laid out for; the layer runs on that grid only, as
    timm's Beit does (other sizes need a rebuilt model and a resized table). `group`: file the
    variables under that layer's path (the output projection's, whose output is timm's `attn`
    output; zoo.layers.grouping).
    """

    def __init__(self, num_heads, grid, group=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.grid = tuple(int(g) for g in grid)
        self.group = group
        self._index = relative_position_index(self.grid).reshape(-1)

    def build(self, input_shape):
        dim = input_shape[-1] // 3
        tokens = self.grid[0] * self.grid[1] + 1
        if input_shape[1] is not None and input_shape[1] != tokens:
            raise ValueError(
                f"{self.name}: {input_shape[1] - 1} patch tokens, but the relative position bias "
                f"table is laid out for a {self.grid[0]}x{self.grid[1]} patch grid "
                f"({tokens - 1} patches). BEiT runs at the input size it was built for: timm "
                f"rebuilds the model for another img_size and resizes the table "
                f"(resize_rel_pos_bias_table), which this layer does not do")
        zeros = keras.initializers.Zeros()
        self.q_bias = add_weight(self, self.group, "q_bias", (dim,), zeros)
        self.v_bias = add_weight(self, self.group, "v_bias", (dim,), zeros)
        h, w = self.grid
        self.table = add_weight(self, self.group, "relative_position_bias_table",
                                ((2 * h - 1) * (2 * w - 1) + 3, self.num_heads), zeros)

    def position_bias(self):
        """(1, heads, N, N): the table gathered by the index, timm's `_get_rel_pos_bias()`."""
        n = self.grid[0] * self.grid[1] + 1
        bias = ops.reshape(ops.take(self.table, self._index, axis=0), (n, n, self.num_heads))
        return ops.expand_dims(ops.transpose(bias, (2, 0, 1)), 0)

    def call(self, qkv):
        qkv = qkv + ops.concatenate([self.q_bias, ops.zeros_like(self.q_bias), self.v_bias])
        return fused_attention(qkv, self.num_heads, bias=self.position_bias())

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 3)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "grid": list(self.grid),
                "group": self.group}
