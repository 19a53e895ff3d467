"""Dense and 1x1 Conv2D layers run as one matmul on the (rows, channels) view of their input.

Keras 3 computes a Dense on (B, N, C) tokens (or a 1x1 Conv2D on (B, H, W, C) maps) as a
3-D/4-D product followed by a separate bias add and a separate activation: three full-size passes
over memory. TensorFlow's oneDNN rewrite (Grappler's remapper) fuses MatMul + BiasAdd + exact
GELU into one `_MklFusedMatMul`, but only when the three meet on a 2-D tensor, with no reshape in
between. These layers reshape to (rows, C) once, run matmul -> bias_add -> activation there and
reshape back, so the fusion applies; at ViT/ConvNeXt MLP shapes that removes the GELU's five
elementwise passes (docs/performance.md). Variables, their shapes and paths, and the config are
Keras' own: weights and mapping rules are unchanged. The classes carry Keras' names on purpose
(registered as `zoo>Dense`, `zoo>Conv2D`): a .weights.h5 file addresses each layer by its class's
snake_case name and index (`layers/dense_3/vars/0`), so the same names keep the file layout of a
model built with plain Keras layers, and either model loads the other's weights.

The activation to fuse is the layer's `activation` (`zoo.layers.gelu.exact_gelu` for torch's
nn.GELU): keep its erf form, which both oneDNN's pattern and TFLite's GELU op recognise.
Grouped convolutions (`groups > 1`, RegNet, ResNeXt) take a second fast path. Keras' TensorFlow
backend wraps every grouped convolution in its own `tf.function(jit_compile=True)`, because
TensorFlow's CPU kernels once had none; with oneDNN (TensorFlow's default CPU backend on x86
Linux) the native Conv2D runs groups forward and backward, 1.1-9x faster than that XLA island at
RegNet's shapes (docs/performance.md). Without oneDNN, Grappler's fused Conv2D+BiasAdd kernel
still rejects groups ("Fused conv implementation does not support grouped convolutions"), so
the layer then keeps Keras' route.

A stride-1 k x k convolution over at least WIDE_INPUT channels (FCN's head, 2048 -> 512 at 65x65)
takes a third path: k*k matmuls on the (rows, channels) view, each result summed at its tap's
offset. TensorFlow's oneDNN (3.7, brgemm kernel on plain HWIO weights) is 1.2-1.75x PyTorch's at
such widths, its matmul is not (docs/performance.md). Padding the outputs rather than slicing
the input keeps one view of the input, so training keeps no per-tap copies of it.
"""
import functools

import keras
import tensorflow as tf


def _plain(layer):
    """Whether `layer` computes a plain float32 product (no LoRA, no quantisation): anything else
    takes the Keras parent's own call."""
    return (not getattr(layer, "lora_enabled", False) and not layer.quantization_mode
            and layer.compute_dtype == "float32")


def _rows_matmul(x, kernel, bias, activation):
    """activation(x @ kernel + bias) over the last axis of x, computed on its 2-D view."""
    flat = len(x.shape) > 2
    lead = tf.shape(x)[:-1] if flat else None
    y = tf.matmul(tf.reshape(x, (-1, kernel.shape[0])) if flat else x, kernel)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    if activation is not None:
        y = activation(y)
    return tf.reshape(y, tf.concat([lead, [kernel.shape[1]]], 0)) if flat else y


@keras.saving.register_keras_serializable(package="zoo")
class Dense(keras.layers.Dense):
    """keras.layers.Dense (same variables, config and result) on the 2-D view of its input:
    torch's nn.Linear on any number of leading axes, with the bias and activation fused into the
    matmul by TensorFlow's CPU rewrite."""

    def call(self, inputs, training=None):
        if not _plain(self) or len(inputs.shape) < 2:
            return super().call(inputs, training=training)
        return _rows_matmul(inputs, self.kernel, self.bias, self.activation)


@functools.cache
def onednn_enabled() -> bool:
    """Whether this TensorFlow runs its CPU kernels through oneDNN (build and
    TF_ENABLE_ONEDNN_OPTS): only then does every Conv2D fusion Grappler makes accept groups."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow without the probe: keep Keras' route
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


# Input channels from which a stride-1, undilated, ungrouped k x k convolution runs as matmuls.
# Single layers, time of the taps / of TensorFlow's Conv2D: at 1024-2048 channels 0.6-0.9 on
# 28-128 px maps, 0.85-1.2 (noise) at 7-33 px; at 256-512 channels 1.2 (docs/performance.md).
WIDE_INPUT = 1024


def wide(in_channels, kernel, strides, groups, dilation) -> bool:
    """Whether zoo's Conv2D computes this convolution as matmuls (WIDE_INPUT); kernel, strides and
    dilation are (h, w) pairs."""
    return (in_channels is not None and in_channels >= WIDE_INPUT and groups == 1
            and max(kernel) > 1 and tuple(strides) == (1, 1) and tuple(dilation) == (1, 1))


def _taps_conv(x, kernel, padding):
    """A stride-1 convolution ("same" or "valid") as one matmul per kernel tap on the input's 2-D
    view; tap (i, j)'s product, padded like the input would be, contributes its window shifted by
    (i, j)."""
    kh, kw = kernel.shape[:2]
    dims = tf.shape(x)
    h, w = (x.shape[a] if x.shape[a] is not None else dims[a] for a in (1, 2))
    pads = None
    if padding == "same":   # TF's SAME: the odd pixel at the end
        pads = [[0, 0], [(kh - 1) // 2, kh // 2], [(kw - 1) // 2, kw // 2], [0, 0]]
    else:
        h, w = h - kh + 1, w - kw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            y = _rows_matmul(x, kernel[i, j], None, None)
            y = (tf.pad(y, pads) if pads else y)[:, i:i + h, j:j + w]
            out = y if out is None else out + y
    return out


@keras.saving.register_keras_serializable(package="zoo")
class Conv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D (same variables, config and result); with a 1x1 kernel, stride 1,
    channels-last it is computed as a matmul on the (B*H*W, C) view, which a 1x1 convolution is,
    and oneDNN then fuses its bias and activation (torch's conv_mlp 1x1 Conv2d). A grouped
    convolution runs TensorFlow's native kernel instead of Keras' XLA island when oneDNN is on,
    and so does a dilated one instead of Keras' space-to-batch route. A stride-1 one over at least
    WIDE_INPUT channels runs as k*k matmuls. Any other convolution takes Keras' own call."""

    def convolution_op(self, inputs, kernel):
        if (self.data_format == "channels_last" and _plain(self)
                and wide(inputs.shape[-1], self.kernel_size, self.strides, self.groups,
                         self.dilation_rate)):
            return _taps_conv(inputs, kernel, self.padding)
        # A dilated convolution: Keras' route (tf.nn.convolution) computes it as SpaceToBatchND ->
        # Conv2D -> BatchToSpaceND, which at DeepLabV3's rates (12-36 on a 33x33 map) splits the
        # map into hundreds of tiny images; the Conv2D op takes the dilation itself, on oneDNN and
        # on TensorFlow's own CPU kernel (1.8x at rate 12, 2.8x at 36, docs/performance.md).
        native = (self.groups == 1 and max(self.dilation_rate) > 1) or (
            self.groups > 1 and onednn_enabled())
        if not native or self.data_format != "channels_last" or not _plain(self):
            return super().convolution_op(inputs, kernel)
        return tf.nn.conv2d(inputs, kernel, strides=self.strides, padding=self.padding.upper(),
                            dilations=self.dilation_rate, data_format="NHWC")

    def _as_matmul(self):
        return (tuple(self.kernel_size) == (1, 1) and tuple(self.strides) == (1, 1)
                and self.groups == 1 and self.data_format == "channels_last" and _plain(self))

    def call(self, inputs):
        if not self._as_matmul():
            return super().call(inputs)
        kernel = tf.reshape(self.kernel, self.kernel.shape[2:])
        return _rows_matmul(inputs, kernel, self.bias if self.use_bias else None, self.activation)
