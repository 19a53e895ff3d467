"""Deformable convolution (torchvision.ops.DeformConv2d) as a Keras layer."""
import keras

from zoo.ops.deform_conv import deform_conv2d


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@keras.saving.register_keras_serializable(package="zoo")
class DeformConv2D(keras.layers.Layer):
    """`torchvision.ops.DeformConv2d`: called on `[x, offset]` (DCN v1) or `[x, offset, mask]`
    (v2), NHWC, the offset and mask computed by the model's own layers as in torchvision.

    Variables `kernel` (kh, kw, in // groups, filters) and `bias` (filters,) take torch's `weight`
    and `bias` through the `conv2d` transform (whose check compares `strides`, `dilation_rate` and
    `groups` with the torch module). `padding` is torch's explicit zero padding (int or pair),
    not Keras' "same"/"valid". The number of offset groups is read from the offset's channels,
    2 * offset_groups * kh * kw, as torchvision does."""

    def __init__(self, filters, kernel_size, strides=1, padding=0, dilation_rate=1, groups=1,
                 use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.groups, self.use_bias = int(filters), int(groups), bool(use_bias)
        self.kernel_size, self.strides = _pair(kernel_size), _pair(strides)
        self.padding, self.dilation_rate = _pair(padding), _pair(dilation_rate)

    def build(self, input_shape):
        cin = input_shape[0][-1]
        if cin % self.groups or self.filters % self.groups:
            raise ValueError(f"channels {cin} -> {self.filters} not divisible by groups {self.groups}")
        self.kernel = self.add_weight(name="kernel", shape=(*self.kernel_size, cin // self.groups,
                                                            self.filters))
        self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
                     if self.use_bias else None)

    def call(self, inputs):
        x, offset, *mask = inputs
        return deform_conv2d(x, offset, self.kernel, self.bias, self.strides, self.padding,
                             self.dilation_rate, mask[0] if mask else None, self.groups)

    def compute_output_shape(self, input_shape):
        return (*input_shape[1][:3], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding,
                "dilation_rate": self.dilation_rate, "groups": self.groups,
                "use_bias": self.use_bias}
