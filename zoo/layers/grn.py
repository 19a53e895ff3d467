"""Global Response Normalization (ConvNeXt V2)."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="zoo")
class GlobalResponseNorm(keras.layers.Layer):
    """timm `GlobalResponseNorm` / ConvNeXt-V2 GRN on NHWC input:

        g = ||x||_2 over (H, W), per sample and channel
        n = g / (mean of g over channels + eps)
        y = x + bias + weight * (x * n)

    i.e. the paper's `gamma * (x * Nx) + beta + x` (the residual `x` is part of the layer). The
    norm is an L2 norm over space, not a mean, and the normaliser is a mean over *channels*; eps
    is added to the mean, outside the square root. timm's channels-first variant (convnextv2 with
    `conv_mlp`) computes the same thing on NCHW, which is this layer on NHWC.

    Variables are named `weight`/`bias` like the torch parameters (mapped with `identity`), and
    start at zero like timm's, so the layer is an identity until trained.
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.weight = self.add_weight(name="weight", shape=(channels,), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")

    def call(self, x):
        g = ops.sqrt(ops.sum(ops.square(x), axis=(1, 2), keepdims=True))
        n = g / (ops.mean(g, axis=-1, keepdims=True) + self.epsilon)
        return x + self.bias + self.weight * (x * n)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
