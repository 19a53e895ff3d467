"""Pooling with PyTorch semantics."""
import keras
from keras import ops


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (int(v), int(v))


@keras.saving.register_keras_serializable(package="zoo")
class TorchMaxPool2D(keras.layers.Layer):
    """`nn.MaxPool2d(kernel, stride, padding, ceil_mode)` on NHWC input.

    PyTorch pads max-pooling with -inf (a zero pad is only equivalent right after a ReLU) and
    `ceil_mode=True` adds a partial window at the bottom/right; Keras has neither, so the input is
    padded with -inf explicitly and pooled with "valid".
    """

    def __init__(self, pool_size, strides=None, padding=0, ceil_mode=False, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _pair(pool_size)
        self.strides = _pair(strides if strides is not None else pool_size)
        self.padding = _pair(padding)
        self.ceil_mode = bool(ceil_mode)

    def _extra(self, size, axis):
        # Extra bottom/right padding that ceil_mode needs (torch's output-size formula).
        k, s, p = self.pool_size[axis], self.strides[axis], self.padding[axis]
        span = size + 2 * p - k
        out = -(-span // s) + 1
        out = ops.where((out - 1) * s >= size + p, out - 1, out)
        return ops.maximum((out - 1) * s + k - (size + 2 * p), 0)

    def call(self, x):
        (ph, pw) = self.padding
        pad_b = pad_r = 0
        if self.ceil_mode:
            shape = ops.shape(x)
            pad_b, pad_r = self._extra(shape[1], 0), self._extra(shape[2], 1)
        if ph or pw or self.ceil_mode:
            x = ops.pad(x, [[0, 0], [ph, ph + pad_b], [pw, pw + pad_r], [0, 0]],
                        constant_values=float("-inf"))
        return ops.max_pool(x, self.pool_size, self.strides, padding="valid")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape

        def size(v, axis):
            if v is None:
                return None
            k, s, p = self.pool_size[axis], self.strides[axis], self.padding[axis]
            span = v + 2 * p - k
            if not self.ceil_mode:
                return span // s + 1
            out = -(-span // s) + 1
            return out - 1 if (out - 1) * s >= v + p else out

        return (n, size(h, 0), size(w, 1), c)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding, "ceil_mode": self.ceil_mode}
