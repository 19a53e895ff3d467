"""`nn.AdaptiveAvgPool2d` with PyTorch's bin boundaries."""
import keras
from keras import ops


def _pair(v):
    return tuple(int(s) for s in v) if isinstance(v, (list, tuple)) else (int(v), int(v))


def _bin_weights(size, out):
    """(out, size) matrix whose row i averages torch's bin i of an axis of length `size`.

    torch's bin i covers [floor(i * size / out), ceil((i + 1) * size / out)): bins overlap when
    `size` is not a multiple of `out` and repeat pixels when size < out, so neither Keras pooling
    layer reproduces them. Built from the runtime size so that (None, None, C) inputs work.
    """
    size = ops.cast(size, "int32")
    i = ops.arange(out, dtype="int32")
    start = (i * size) // out
    end = ((i + 1) * size + out - 1) // out
    j = ops.arange(size, dtype="int32")
    inside = ops.logical_and(j[None, :] >= start[:, None], j[None, :] < end[:, None])
    inside = ops.cast(inside, "float32")
    return inside / ops.sum(inside, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package="zoo")
class AdaptiveAvgPool2D(keras.layers.Layer):
    """`nn.AdaptiveAvgPool2d(output_size)` on NHWC input, for any input size.

    Each torch bin is a rectangle (row bin x column bin), so its mean factors into a row average
    followed by a column average: two small matrix products with the bin weights of each axis.
    At the size the classifier was trained for (e.g. 7x7 features of VGG at 224) it is the
    identity.
    """

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        self.output_size = _pair(output_size)

    def call(self, x):
        shape = ops.shape(x)
        rows = ops.cast(_bin_weights(shape[1], self.output_size[0]), x.dtype)
        cols = ops.cast(_bin_weights(shape[2], self.output_size[1]), x.dtype)
        x = ops.einsum("ih,bhwc->biwc", rows, x)
        return ops.einsum("jw,biwc->bijc", cols, x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size}
