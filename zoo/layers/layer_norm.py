"""LayerNormalization over the last axis in fewer full-size passes (ViT, ConvNeXt, ...)."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="zoo")
class LayerNormalization(keras.layers.LayerNormalization):
    """keras.layers.LayerNormalization with the same variables (`gamma`, `beta`), config and
    result, computed as torch's LayerNorm does: centre once, take the variance of the centred
    tensor, then one scale-and-shift:

        d = x - mean(x);  y = d * (rsqrt(mean(d * d) + eps) * gamma) + beta

    Keras 3's own call (`ops.layer_normalization`) runs `moments` (mean, squared difference,
    mean) and then `x * inv + (beta - mean * inv)`, which in TensorFlow's graph is two more
    full-size elementwise passes; on a 2-core CPU that made it 20-30 % slower at ViT-S and
    ConvNeXt shapes (docs/performance.md). Anything else than the plain float32, last-axis,
    centred-and-scaled case (the only one the converted models use) takes Keras' own path.

    Named like Keras' class on purpose (registered as `zoo>LayerNormalization`): a .weights.h5
    file addresses each layer by its class's snake_case name and index (`layers/
    layer_normalization_3/vars/0`), so the same name keeps the file's layout that of plain Keras
    layers, loadable into a model built with either.
    """

    def _fast(self, inputs):
        rank = len(inputs.shape)
        return (self.axis in ([-1], [rank - 1]) and self.center and self.scale
                and not self.rms_scaling and self.compute_dtype == "float32"
                and keras.backend.standardize_dtype(inputs.dtype) == "float32")

    def call(self, inputs):
        if not self._fast(inputs):
            return super().call(inputs)
        d = inputs - ops.mean(inputs, axis=-1, keepdims=True)
        inv = ops.rsqrt(ops.mean(d * d, axis=-1, keepdims=True) + self.epsilon)
        return d * (inv * self.gamma) + self.beta
