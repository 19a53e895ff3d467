"""GELU with a chosen form, as a serialisable layer."""
import math

import keras
from keras import ops

_SQRT1_2 = 1 / math.sqrt(2)


@keras.saving.register_keras_serializable(package="zoo")
def exact_gelu(x):
    """x * Phi(x) in the erf form torch's CPU kernel uses, 0.5 * x * (1 + erf(x / sqrt(2))).
    TensorFlow's tf.nn.gelu (Keras' "gelu") uses the erfc form 0.5 * x * erfc(-x / sqrt(2)),
    whose Neg and Erfc ops cost ~40 % more on CPU at ViT's MLP shapes (docs/performance.md);
    both are within float32 rounding of each other (measured 1e-7 relative). Keep this exact
    expression: the TFLite converter recognises it (and tf.nn.gelu) as its GELU op, while
    e.g. x * ((1 + erf(x * c)) * 0.5) leaves an Erf, which TFLite's builtins lack."""
    return 0.5 * x * (1.0 + ops.erf(x * _SQRT1_2))


@keras.saving.register_keras_serializable(package="zoo")
class GELU(keras.layers.Layer):
    """torch's `nn.GELU(approximate=...)`: approximate=True is the tanh form (timm `GELUTanh`,
    the TensorFlow-trained `_tf_` models), False the exact erf form (`exact_gelu`).
    `Activation("gelu")` is always the exact one and its config cannot carry the flag, hence this
    layer."""

    def __init__(self, approximate=False, **kwargs):
        super().__init__(**kwargs)
        self.approximate = bool(approximate)

    def call(self, x):
        if self.approximate:
            return keras.activations.gelu(x, approximate=True)
        return exact_gelu(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "approximate": self.approximate}
