"""Per-channel layer scale (ConvNeXt, CaiT, ...)."""
import keras
from keras import ops

# torch tensor layout of the scale, per source: (variable name, shape suffix after channels).
# The `identity` transform copies a torch leaf to the Keras variable of the same name and shape,
# so the variable mirrors the source's tensor; see `LayerScale`.
_LAYOUTS = {
    "timm": ("gamma", ()),                 # timm ConvNeXtBlock.gamma: (C,)
    "torchvision": ("layer_scale", (1, 1)),   # torchvision CNBlock.layer_scale: (C, 1, 1)
}


@keras.saving.register_keras_serializable(package="zoo")
class LayerScale(keras.layers.Layer):
    """`y = x * scale` with one learned scale per channel (last axis, NHWC).

    `layout` names and shapes the variable like the source's tensor ("timm": `gamma` (C,),
    "torchvision": `layer_scale` (C, 1, 1), reshaped to (C,) when applied: a (C, 1, 1) tensor
    must not broadcast against NHWC as it does against NCHW). That is only so the generic
    `identity` transform can map both; with a reshaping transform one (C,) `gamma` would do.

    `init_value` (1e-6 in ConvNeXt) makes every residual branch almost silent at init, which
    hides mapping mistakes; validation therefore perturbs it.
    """

    def __init__(self, init_value=1e-6, layout="timm", **kwargs):
        super().__init__(**kwargs)
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(_LAYOUTS)}, got {layout!r}")
        self.init_value = float(init_value)
        self.layout = layout

    def build(self, input_shape):
        var_name, suffix = _LAYOUTS[self.layout]
        self.scale = self.add_weight(name=var_name, shape=(input_shape[-1], *suffix),
                                     initializer=keras.initializers.Constant(self.init_value))

    def call(self, x):
        return x * ops.reshape(self.scale, (-1,))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value, "layout": self.layout}
