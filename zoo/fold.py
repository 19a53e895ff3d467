"""Inference folding: a copy of a converted Keras model with every per-channel affine that directly
follows a linear layer merged into that layer's kernel and bias (issue 11's inference export).

What is folded, and only when the linear layer's output feeds nothing else (a folded kernel
would change the other consumers):
- BatchNormalization (inference statistics) after Conv1D/Conv2D, DepthwiseConv2D or Dense:
  `y = (W x + b - mean) * gamma / sqrt(var + eps) + beta`, so W' = W * s, b' = (b - mean) * s + beta
  with s = gamma / sqrt(var + eps) per output channel;
- zoo's LayerScale after Conv/Dense (ConvNeXt, ViT-style layer scale): W' = W * g, b' = b * g.
And every weight-standardised StdConv2D (BiT) becomes a plain Conv2D holding its standardised
kernel: the standardisation depends on the kernel alone, so serving need not redo it per call
(an affine after it folds into that standardised kernel).
Nothing else: a BatchNormalization *before* a convolution (pre-activation nets) would need the
convolution's zero padding to see the shifted mean, so it stays as it is.

The folded layers become `FoldedAway` pass-throughs (same name), so the graph, its input and output
names and its feature layers are unchanged; the copy is for serving (its BatchNormalization
layers are gone, so it must not be trained). Keras only: no torch.
"""
from __future__ import annotations

import keras
import numpy as np

from zoo.layers.layer_scale import LayerScale
from zoo.layers.std_conv import StdConv2D


class FoldedAway(keras.layers.Layer):
    """Where a folded affine was: passes its input through. Takes the call arguments the affine
    was called with (BatchNormalization's `training`, `mask`), which the cloned graph replays."""

    def call(self, inputs, *args, **kwargs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


_LINEAR = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
           keras.layers.Dense)


def _single_producer(layer):
    """The layer whose output `layer` consumes, when `layer` is called once on one tensor."""
    if len(layer._inbound_nodes) != 1:
        return None
    inputs = layer._inbound_nodes[0].input_tensors
    if len(inputs) != 1:
        return None
    producer = inputs[0]._keras_history.operation
    return producer if isinstance(producer, keras.layers.Layer) else None


def _scale_shift(layer) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) with layer(x) = x * s + t per channel of the last axis, or None if `layer` is not a
    foldable affine."""
    if isinstance(layer, LayerScale):
        scale = np.asarray(layer.scale.numpy(), np.float64).reshape(-1)
        return scale, np.zeros_like(scale)
    if isinstance(layer, keras.layers.BatchNormalization):
        if layer.axis not in (-1, len(layer.input.shape) - 1):   # channels last only
            return None
        mean = np.asarray(layer.moving_mean.numpy(), np.float64)
        var = np.asarray(layer.moving_variance.numpy(), np.float64)
        gamma = np.asarray(layer.gamma.numpy(), np.float64) if layer.scale else np.ones_like(mean)
        beta = np.asarray(layer.beta.numpy(), np.float64) if layer.center else np.zeros_like(mean)
        s = gamma / np.sqrt(var + layer.epsilon)
        return s, beta - mean * s
    return None


def foldable_pairs(model) -> dict[str, str]:
    """{affine layer name: linear layer name} of every pair `fold_for_inference` merges."""
    pairs = {}
    for layer in model.layers:
        if _scale_shift(layer) is None:
            continue
        producer = _single_producer(layer)
        if (isinstance(producer, _LINEAR) and len(producer._inbound_nodes) == 1
                and len(producer._outbound_nodes) == 1
                and getattr(producer.activation, "__name__", "") == "linear"):
            pairs[layer.name] = producer.name
    return pairs


def _kernel(linear) -> np.ndarray:
    """The kernel a linear layer applies (StdConv2D's standardised one), in float64."""
    if isinstance(linear, StdConv2D):
        return np.asarray(keras.ops.convert_to_numpy(linear.standardized_kernel()), np.float64)
    return np.asarray(linear.kernel.numpy(), np.float64)


def _folded_weights(linear, s, t) -> list[np.ndarray]:
    """The linear layer's [kernel, bias] with the affine (s, t) of its outputs merged in."""
    kernel = _kernel(linear)
    bias = (np.asarray(linear.bias.numpy(), np.float64) if linear.use_bias
            else np.zeros(s.shape, np.float64))
    if isinstance(linear, keras.layers.DepthwiseConv2D):
        # kernel (kh, kw, in, multiplier): output channel c * multiplier + m
        kernel = kernel * s.reshape(kernel.shape[2], kernel.shape[3])
    else:   # (..., in, out)
        kernel = kernel * s
    return [kernel.astype(np.float32), (bias * s + t).astype(np.float32)]


def fold_for_inference(model) -> tuple[keras.Model, dict]:
    """(folded copy of `model`, {"batchnorm": n, "layer_scale": n, "weight_standardization": n}
    folded). The copy has the same inputs, outputs and layer names; `model` is not changed."""
    pairs = foldable_pairs(model)
    linear_of = {v: k for k, v in pairs.items()}

    def clone(layer):
        if layer.name in pairs:
            return FoldedAway(name=layer.name)
        config, cls = layer.get_config(), layer.__class__
        if isinstance(layer, StdConv2D):
            config.pop("eps")
            cls = keras.layers.Conv2D
        if layer.name in linear_of:
            config["use_bias"] = True
        return cls.from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone)
    counts = {"batchnorm": 0, "layer_scale": 0, "weight_standardization": 0}
    for layer in model.layers:
        if layer.name in pairs or not layer.weights:
            continue
        target = folded.get_layer(layer.name)
        if layer.name in linear_of:
            affine = model.get_layer(linear_of[layer.name])
            s, t = _scale_shift(affine)
            target.set_weights(_folded_weights(layer, s, t))
            counts["layer_scale" if isinstance(affine, LayerScale) else "batchnorm"] += 1
        elif isinstance(layer, StdConv2D):
            target.set_weights([_kernel(layer).astype(np.float32), *layer.get_weights()[1:]])
        else:
            target.set_weights(layer.get_weights())
        counts["weight_standardization"] += isinstance(layer, StdConv2D)
    return folded, counts


def xla_slow_convolutions(model) -> int:
    """How many depthwise and grouped convolutions `model` has. XLA's CPU code for these is slow:
    in the catalogue benchmark (2-core CPU, docs/performance.md) the XLA-compiled folded graph
    took 2.2-16x the plain folded graph's time for the depthwise families (MobileNet,
    EfficientNet, MNASNet, ConvNeXt, Xception, MobileViT, ShuffleNet) and 1.1-2x for the grouped
    ones (ResNeXt, RegNet); the transformers were the ones it made faster (0.6-1.0x)."""
    return sum(isinstance(layer, keras.layers.DepthwiseConv2D) or getattr(layer, "groups", 1) > 1
               for layer in model._flatten_layers(include_self=False))


def xla_warning(model) -> str | None:
    """What --inference xla costs `model` on CPU, when it has convolutions XLA is slow on."""
    n = xla_slow_convolutions(model)
    if not n:
        return None
    return (f"--inference xla: this model has {n} depthwise or grouped convolutions, which XLA "
            f"compiles to slow CPU code (1.1-16x the folded graph's time in the catalogue "
            f"benchmark, docs/performance.md); for CPU serving, --inference fold is the faster "
            f"choice")
