"""GELU with a chosen form, as a serialisable layer."""
import keras


@keras.saving.register_keras_serializable(package="zoo")
class GELU(keras.layers.Layer):
    """torch's `nn.GELU(approximate=...)`: approximate=True is the tanh form (timm `GELUTanh`,
    the TensorFlow-trained `_tf_` models), False the exact erf form. `Activation("gelu")` is
    always the exact one and its config cannot carry the flag, hence this layer."""

    def __init__(self, approximate=False, **kwargs):
        super().__init__(**kwargs)
        self.approximate = bool(approximate)

    def call(self, x):
        return keras.activations.gelu(x, approximate=self.approximate)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "approximate": self.approximate}
