"""Swin's shifted-window attention on NHWC maps, split the way the sources' weights are:

    x (B, H, W, C) -> WindowPartition -> (B, nh, nw, wh*ww, C) -> Dense qkv -> WindowAttention
    -> (B, nh, nw, wh*ww, C) -> Dense proj -> WindowMerge -> (B, H, W, C)

Windows stay on their own axes (nh, nw) instead of being folded into the batch, so Dense acts on
them as it is and the shift mask broadcasts over the batch; everything is reshape/transpose/einsum
(no Python loop over windows or heads) and works at any input size.

The two sources order the shift and the padding of a map that is not a multiple of the window
differently (identical when it is, e.g. at 224 px):
- "roll_pad" (timm): roll by -shift, then zero-pad at the bottom/right; the shift is fixed when
  the model is built (0 in a stage whose trained grid fits in one window).
- "pad_roll" (torchvision): zero-pad, then roll by -shift, the shift being 0 along an axis whose
  padded size is one window -- decided at run time from the map.
In both, the padded tokens take part in the attention (nothing masks them) and the shift mask
labels the padded grid in three bands per axis, -100 between tokens of different bands.

Derived tensors are rebuilt here, never converted: `relative_position_index` (both) and Swin V2's
`relative_coords_table`; tests/test_family_swin.py compares them with the sources' buffers.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

ORDERS = ("roll_pad", "pad_roll")
MASK_VALUE = -100.0          # both sources' mask value (not -inf)
LOGIT_SCALE_MAX = math.log(100.0)   # Swin V2 clamps the learned log-scale here before exp()
CPB_HIDDEN = 512             # Swin V2 continuous position bias MLP: Linear(2, 512), ReLU, Linear


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(i) for i in v)


def relative_position_index(window):
    """(N, N) int index into the ((2wh-1)(2ww-1), heads) bias table for every pair of the
    wh*ww tokens of a window (row-major), as timm's and torchvision's buffers hold it."""
    wh, ww = _pair(window)
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :]          # (2, N, N): dh, dw of token i - token j
    return ((rel[0] + wh - 1) * (2 * ww - 1) + rel[1] + ww - 1).astype("int32")


def relative_coords_table(window, pretrained_window=None):
    """Swin V2's ((2wh-1), (2ww-1), 2) log-spaced relative coordinates fed to the position MLP:
    (dh, dw) / (pretrained window - 1) * 8, then sign * log2(1 + |.|) / log2(8)."""
    wh, ww = _pair(window)
    ph, pw = _pair(pretrained_window) if pretrained_window else (wh, ww)
    grid = np.stack(np.meshgrid(np.arange(-(wh - 1), wh), np.arange(-(ww - 1), ww),
                                indexing="ij"), axis=-1).astype("float32")
    grid = grid / np.array([max(ph - 1, 1), max(pw - 1, 1)], "float32") * 8.0
    return (np.sign(grid) * np.log2(np.abs(grid) + 1.0) / 3.0).astype("float32")


def _effective_shift(windows_along, shift, order):
    """torchvision drops the shift along an axis whose padded size is a single window."""
    if order == "pad_roll" and shift:
        return ops.where(windows_along > 1, shift, 0)
    return shift


def _padding(size, window):
    return (window - size % window) % window


class _WindowLayer(keras.layers.Layer):
    def __init__(self, window, shift=0, order="roll_pad", **kwargs):
        super().__init__(**kwargs)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.window, self.shift, self.order = _pair(window), _pair(shift), order

    def get_config(self):
        return {**super().get_config(), "window": list(self.window), "shift": list(self.shift),
                "order": self.order}


@keras.saving.register_keras_serializable(package="zoo")
class WindowPartition(_WindowLayer):
    """(B, H, W, C) -> (B, nh, nw, wh*ww, C): shifted, padded, cut into windows (row-major
    tokens inside a window, windows row-major as the sources' partition orders them)."""

    def call(self, x):
        (wh, ww), (sh, sw) = self.window, self.shift
        shape = ops.shape(x)
        pad_h, pad_w = _padding(shape[1], wh), _padding(shape[2], ww)
        if self.order == "roll_pad":
            if sh or sw:
                x = ops.roll(x, (-sh, -sw), axis=(1, 2))
            x = ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
        else:
            x = ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
            nh, nw = (shape[1] + pad_h) // wh, (shape[2] + pad_w) // ww
            if sh or sw:
                x = ops.roll(x, (-_effective_shift(nh, sh, "pad_roll"),
                                 -_effective_shift(nw, sw, "pad_roll")), axis=(1, 2))
        nh, nw = (shape[1] + pad_h) // wh, (shape[2] + pad_w) // ww
        x = ops.reshape(x, (shape[0], nh, wh, nw, ww, shape[3]))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (shape[0], nh, nw, wh * ww, shape[3]))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        (wh, ww) = self.window
        up = (lambda n, k: None if n is None else -(-n // k))
        return (b, up(h, wh), up(w, ww), wh * ww, c)


@keras.saving.register_keras_serializable(package="zoo")
class WindowMerge(_WindowLayer):
    """[windows (B, nh, nw, wh*ww, C), x (B, H, W, C)] -> (B, H, W, C): WindowPartition undone
    (windows joined, shift rolled back, padding cropped, in the source's order); `x` only gives
    the size to crop to."""

    def call(self, inputs):
        windows, ref = inputs
        (wh, ww), (sh, sw) = self.window, self.shift
        shape, size = ops.shape(windows), ops.shape(ref)
        nh, nw, c = shape[1], shape[2], shape[4]
        x = ops.reshape(windows, (shape[0], nh, nw, wh, ww, c))
        x = ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (shape[0], nh * wh, nw * ww, c))
        if self.order == "roll_pad":
            x = x[:, :size[1], :size[2]]
            return ops.roll(x, (sh, sw), axis=(1, 2)) if sh or sw else x
        if sh or sw:
            x = ops.roll(x, (_effective_shift(nh, sh, "pad_roll"),
                             _effective_shift(nw, sw, "pad_roll")), axis=(1, 2))
        return x[:, :size[1], :size[2]]

    def compute_output_shape(self, input_shapes):
        return (*input_shapes[1][:3], input_shapes[0][-1])


def shift_mask(nh, nw, window, shift, order="roll_pad"):
    """(nh, nw, N, N) additive mask of the shifted windows of an (nh*wh, nw*ww) padded grid: 0
    within a band, -100 across. Each axis has three bands, [0, P-w), [P-w, P-s), [P-s, P) (the
    sources' slices (0, -w), (-w, -s), (-s, None)); with s = 0 a window holds one band only."""
    (wh, ww), (sh, sw) = _pair(window), _pair(shift)

    def bands(n, w, s):
        size = n * w
        pos = ops.arange(size)
        s = _effective_shift(n, s, order)
        label = ops.cast(pos >= size - w, "int32") + ops.cast(pos >= size - s, "int32")
        return ops.reshape(label, (n, w))

    label = (ops.reshape(bands(nh, wh, sh), (nh, 1, wh, 1)) * 3
             + ops.reshape(bands(nw, ww, sw), (1, nw, 1, ww)))
    label = ops.reshape(label, (nh, nw, wh * ww))
    different = ops.not_equal(label[..., :, None], label[..., None, :])
    return ops.where(different, MASK_VALUE, 0.0)


@keras.saving.register_keras_serializable(package="zoo")
class WindowAttention(_WindowLayer):
    """(B, nh, nw, N, 3C) fused q|k|v of every window -> (B, nh, nw, N, C), per head
    softmax(logits + position bias [+ shift mask]) v, heads concatenated. The q|k|v features are
    ordered (3, heads, head_dim) in both sources (timm `reshape(B_, N, 3, H, -1)`).

    Swin (cosine=False): logits = q k^T / sqrt(head_dim); the bias is
    `relative_position_bias_table` ((2wh-1)(2ww-1), heads), gathered by the rebuilt
    relative_position_index. Swin V2 (cosine=True): logits = cos(q, k) * exp(min(logit_scale,
    log 100)) with `logit_scale` (heads, 1, 1); the bias is 16 sigmoid(cpb_mlp(coords table))
    with the MLP's Linears as the sublayers `cpb_mlp_0` and `cpb_mlp_2` (torch's indices).
    qv_bias: timm V2's `q_bias` and `v_bias` (C,), added here to a bias-free q|k|v Dense (its key
    bias is a zero buffer). Variables keep the sources' names and shapes so `identity` /
    `linear` map them.
    """

    def __init__(self, num_heads, window, shift=0, order="roll_pad", cosine=False,
                 pretrained_window=None, qv_bias=False, **kwargs):
        super().__init__(window, shift, order, **kwargs)
        self.num_heads, self.cosine, self.qv_bias = int(num_heads), bool(cosine), bool(qv_bias)
        self.pretrained_window = _pair(pretrained_window) if pretrained_window else None
        if self.cosine:
            self.cpb_mlp_0 = keras.layers.Dense(CPB_HIDDEN, activation="relu", name="cpb_mlp_0")
            self.cpb_mlp_2 = keras.layers.Dense(self.num_heads, use_bias=False, name="cpb_mlp_2")

    def build(self, input_shape):
        wh, ww = self.window
        if self.qv_bias:
            self.q_bias, self.v_bias = (self.add_weight(name=n, shape=(input_shape[-1] // 3,),
                                                        initializer="zeros")
                                        for n in ("q_bias", "v_bias"))
        if self.cosine:
            self.logit_scale = self.add_weight(
                name="logit_scale", shape=(self.num_heads, 1, 1),
                initializer=keras.initializers.Constant(math.log(10.0)))
            self.cpb_mlp_0.build((None, 2))
            self.cpb_mlp_2.build((None, CPB_HIDDEN))
        else:
            self.relative_position_bias_table = self.add_weight(
                name="relative_position_bias_table",
                shape=((2 * wh - 1) * (2 * ww - 1), self.num_heads),
                initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def position_bias(self):
        """(heads, N, N) bias added to every window's logits."""
        index = relative_position_index(self.window).reshape(-1)
        if self.cosine:
            coords = relative_coords_table(self.window, self.pretrained_window).reshape(-1, 2)
            table = self.cpb_mlp_2(self.cpb_mlp_0(ops.convert_to_tensor(coords)))
        else:
            table = self.relative_position_bias_table
        n = self.window[0] * self.window[1]
        bias = ops.transpose(ops.reshape(ops.take(table, index, axis=0), (n, n, -1)), (2, 0, 1))
        return 16.0 * ops.sigmoid(bias) if self.cosine else bias

    def call(self, qkv):
        shape = ops.shape(qkv)
        dim = qkv.shape[-1] // 3
        head_dim = dim // self.num_heads
        if self.qv_bias:
            qkv = qkv + ops.concatenate([self.q_bias, ops.zeros_like(self.q_bias), self.v_bias])
        # windows on one axis: (B, nh * nw, heads, N, N) logits stay 5-D (oneDNN's softmax limit)
        qkv = ops.reshape(qkv, (shape[0], shape[1] * shape[2], shape[3], 3, self.num_heads,
                                head_dim))
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]   # (B, nW, N, h, d)
        if self.cosine:
            q, k = _l2_normalize(q), _l2_normalize(k)
            scale = ops.exp(ops.minimum(self.logit_scale, LOGIT_SCALE_MAX))   # (heads, 1, 1)
            logits = ops.einsum("bwnhd,bwmhd->bwhnm", q, k) * scale
        else:
            logits = ops.einsum("bwnhd,bwmhd->bwhnm", q * head_dim ** -0.5, k)
        logits = logits + self.position_bias()
        if any(self.shift):
            mask = shift_mask(shape[1], shape[2], self.window, self.shift, self.order)
            n = self.window[0] * self.window[1]
            logits = logits + ops.reshape(mask, (-1, 1, n, n))
        weights = ops.softmax(logits, axis=-1)
        out = ops.einsum("bwhnm,bwmhd->bwnhd", weights, v)
        return ops.reshape(out, (shape[0], shape[1], shape[2], shape[3], dim))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 3)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "cosine": self.cosine,
                "qv_bias": self.qv_bias,
                "pretrained_window": list(self.pretrained_window) if self.pretrained_window
                else None}


def _l2_normalize(x, eps=1e-12):
    """F.normalize(x, dim=-1): x / max(||x||, eps)."""
    return x / ops.maximum(ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True)), eps)


@keras.saving.register_keras_serializable(package="zoo")
class KeyBiasFreeDense(keras.layers.Dense):
    """The fused q|k|v Dense of torchvision's Swin V2: it stores a 3C bias like any Linear, but
    its forward zeroes the key third (`qkv_bias[C:2C].zero_()` on a copy) every time, so the
    stored key bias -- converted as it is -- never acts, in inference or in fine-tuning."""

    def call(self, x):
        dim = self.units // 3
        keep = np.concatenate([np.ones(dim), np.zeros(dim), np.ones(dim)]).astype("float32")
        y = ops.matmul(x, self.kernel)
        return y + self.bias * ops.cast(keep, y.dtype) if self.use_bias else y


@keras.saving.register_keras_serializable(package="zoo")
class PatchMerging2x2(keras.layers.Layer):
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C): odd sizes zero-padded at the bottom/right,
    then each 2x2 neighbourhood concatenated as [(0, 0), (1, 0), (0, 1), (1, 1)] (row, column)
    offsets -- the column offset is the outer one. Both timm (`reshape(B, H/2, 2, W/2, 2, C)
    .permute(0, 1, 3, 4, 2, 5)`) and torchvision (`cat([x0, x1, x2, x3])` of x[0::2, 0::2],
    x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]) use this order; the row-major reading
    [(0, 0), (0, 1), (1, 0), (1, 1)] has the same shape and is wrong."""

    def call(self, x):
        shape = ops.shape(x)
        x = ops.pad(x, [[0, 0], [0, shape[1] % 2], [0, shape[2] % 2], [0, 0]])
        h, w = (shape[1] + shape[1] % 2) // 2, (shape[2] + shape[2] % 2) // 2
        x = ops.reshape(x, (shape[0], h, 2, w, 2, shape[3]))
        x = ops.transpose(x, (0, 1, 3, 4, 2, 5))    # (B, h, w, col offset, row offset, C)
        return ops.reshape(x, (shape[0], h, w, 4 * shape[3]))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        half = (lambda n: None if n is None else (n + 1) // 2)
        return (b, half(h), half(w), 4 * c)
