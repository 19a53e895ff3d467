"""The source's evaluation transform as Keras layers (zoo.preprocessing holds the TF functions
they call, so a layer and `zoo.preprocess` give the same numbers).

The layers call TensorFlow ops directly (dynamic crop offsets, PIL's nearest indices), so they
need the TensorFlow backend, like the SavedModel export.
"""
import keras

from zoo import preprocessing


@keras.saving.register_keras_serializable(package="zoo")
class SourceResize(keras.layers.Layer):
    """Resize images (values 0..255, any size, NHWC) as timm/torchvision do before the centre
    crop: `crop_mode` "center" (shorter side to resize_size), "squash" (both sides) or "border"
    (longer side). Output rounded to integers in 0..255 like PIL's uint8 resampling."""

    def __init__(self, resize_size, crop_mode="center", interpolation="bilinear", **kwargs):
        super().__init__(**kwargs)
        self.resize_size = int(resize_size)
        self.crop_mode = crop_mode
        self.interpolation = interpolation

    def call(self, images):
        import tensorflow as tf

        return preprocessing.resize(tf.cast(images, tf.float32), self.resize_size,
                                    self.crop_mode, self.interpolation)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-3], None, None, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "resize_size": self.resize_size,
                "crop_mode": self.crop_mode, "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package="zoo")
class CenterCropOrPad(keras.layers.Layer):
    """Centre crop to size x size with torchvision's offset rounding (half to even), padding with
    `fill` (0..255 per channel) where the image is smaller than the crop."""

    def __init__(self, size, fill=0, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.fill = list(fill) if isinstance(fill, (list, tuple)) else fill

    def call(self, images):
        return preprocessing.center_crop(images, self.size, self.fill)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-3], self.size, self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "fill": self.fill}


def preprocessing_layers(t: preprocessing.EvalTransform) -> list:
    """resize, centre crop, rescale to [0, 1], normalise with mean/std: `t` as Keras layers."""
    import numpy as np

    return [
        SourceResize(t.resize_size, t.crop_mode, t.interpolation, name="source_resize"),
        CenterCropOrPad(t.size, list(t.fill), name="center_crop"),
        keras.layers.Rescaling(1 / 255, name="rescale"),
        # Normalization takes a variance: std squared, never std itself (docs/pitfalls.md)
        keras.layers.Normalization(mean=list(t.mean), variance=list(np.square(t.std)),
                                   name="normalize"),
    ]


def with_preprocessing(model, t: preprocessing.EvalTransform):
    """`model` behind `t`'s layers: the result takes RGB images with values 0..255 (uint8 or
    float, like keras.applications' include_preprocessing), of any size, NHWC."""
    channels = model.inputs[0].shape[-1]
    images = keras.Input((None, None, channels), name="images")
    x = images
    for layer in preprocessing_layers(t):
        x = layer(x)
    return keras.Model(images, model(x), name=model.name)
