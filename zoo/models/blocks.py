"""The blocks every Keras builder is made of, with PyTorch semantics where Keras differs.

- `pad`: the one padding rule (torch's symmetric/dilated/per-axis padding, or TF "SAME");
- `conv2d`, `depthwise`, `norm`, `activation`, `conv_norm_act`: the layers of a torch
  `ConvNormAct`, sharing one `Settings` value per network (BN eps/momentum, activation, padding);
- `squeeze_excite`, `depthwise_separable`, `inverted_residual`, `residual_add`: the blocks;
- `stage_end`: the `FeatureStage` marker at the end of each feature stage;
- `application`: turns a network body into a keras.applications-style builder (input, classifier
  head or pooling or stage outputs, weights).

Layer names are arguments (prefix + the source's own sub-module names) because recipes map torch
modules onto them.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import keras

from zoo.layers import dense
from zoo.layers.adaptive_pooling import AdaptiveAvgPool2D
from zoo.layers.batch_norm import BatchNormalization
from zoo.layers.feature_stage import FeatureStage
from zoo.layers.std_conv import StdConv2D

TF_SAME = "tf_same"


@dataclass(frozen=True)
class Settings:
    """What the conv/norm/activation layers of one network share.

    bn_momentum is torch's (the weight of the new batch); Keras' momentum weights the running
    value, so the layer gets 1 - bn_momentum. padding None is torch's symmetric padding,
    TF_SAME TensorFlow's "SAME" (weights trained in TF, timm `tf_*`). norm "group" is GroupNorm
    with gn_groups groups; weight_std_eps turns every conv into a weight-standardised StdConv2D.
    """

    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    act: str = "relu"
    padding: str | None = None
    norm: str = "batch"
    gn_groups: int = 32
    weight_std_eps: float | None = None

    def __post_init__(self):
        if self.padding not in (None, TF_SAME):
            raise ValueError(f"padding must be None (torch) or {TF_SAME!r}, got {self.padding!r}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', got {self.norm!r}")


TORCH = Settings()


def make_divisible(v, divisor=8, min_value=None, round_limit=0.9):
    """Channel rounding used by timm/torchvision (needed to reproduce their widths)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def pad(x, kernel, stride=1, dilation=1, padding=None, name=None):
    """Pads like the torch conv and returns (x, Keras padding mode for the conv).

    padding: None (torch's `dilation * (k - 1) // 2` per axis, i.e. `k // 2` for odd kernels),
    an int or a per-axis (ph, pw) pair (symmetric, as `nn.Conv2d(padding=...)`), or TF_SAME.
    Keras "same" is TF "SAME": the odd pixel of the padding goes at the end and how much there is
    depends on the input size (timm's Conv2dSame computes the same at run time). It equals torch's
    symmetric padding only at stride 1 with odd kernels; a strided conv on an even input would be
    shifted by one pixel, so every other case pads explicitly (`<name>_pad`) and convolves "valid".
    """
    if padding == TF_SAME:
        return x, "same"
    (kh, kw), (dh, dw) = _pair(kernel), _pair(dilation)
    natural = (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
    ph, pw = natural if padding is None else _pair(padding)
    if stride == 1 and (ph, pw) == natural and kh % 2 and kw % 2:
        return x, "same"
    if ph or pw:
        x = keras.layers.ZeroPadding2D(ph if ph == pw else ((ph, ph), (pw, pw)),
                                       name=f"{name}_pad")(x)
    return x, "valid"


def conv2d(x, filters, kernel, stride=1, groups=1, use_bias=False, padding=None, dilation=1,
           name=None, cfg=TORCH, activation=None):
    """`nn.Conv2d` (bias off by default, as before a norm); padding: see `pad` (None takes the
    network's: torch's symmetric, or TF "SAME" when cfg.padding says so)."""
    x, mode = pad(x, kernel, stride, dilation, cfg.padding if padding is None else padding, name)
    args = dict(strides=stride, padding=mode, groups=groups, dilation_rate=dilation,
                use_bias=use_bias, activation=activation, name=name)
    if cfg.weight_std_eps is not None:
        return StdConv2D(filters, kernel, eps=cfg.weight_std_eps, **args)(x)
    # zoo's Conv2D runs a grouped convolution on TensorFlow's native kernel, not Keras' XLA
    # island, a dilated one without Keras' space-to-batch and a wide one as matmuls
    # (zoo/layers/dense.py); the others keep Keras' class, as measured.
    native = groups > 1 or max(_pair(dilation)) > 1 or dense.wide(
        x.shape[-1], _pair(kernel), _pair(stride), groups, _pair(dilation))
    return (dense.Conv2D if native else keras.layers.Conv2D)(filters, kernel, **args)(x)


def depthwise(x, kernel, stride=1, name=None, cfg=TORCH, padding=None, use_bias=False,
              dilation=1):
    """`nn.Conv2d(C, C, k, stride, groups=C, dilation)` (channel multiplier 1), padded like
    `conv2d`."""
    x, mode = pad(x, kernel, stride, dilation, cfg.padding if padding is None else padding, name)
    return keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=mode, use_bias=use_bias,
                                        dilation_rate=dilation, name=name)(x)


def norm(x, name, cfg=TORCH):
    """BatchNorm with torch's eps and momentum (the one place they are converted), or GroupNorm."""
    if cfg.norm == "group":
        return keras.layers.GroupNormalization(groups=cfg.gn_groups, axis=-1, epsilon=cfg.bn_eps,
                                               name=name)(x)
    # Right after a bias-free Conv2D, a BatchNormalization TensorFlow folds into the
    # convolution's kernel call; elsewhere that op runs alone and Keras' is faster
    # (zoo/layers/batch_norm.py)
    producer = x._keras_history.operation if hasattr(x, "_keras_history") else None
    after_conv = isinstance(producer, keras.layers.Conv2D) and not producer.use_bias
    cls = BatchNormalization if after_conv else keras.layers.BatchNormalization
    return cls(epsilon=cfg.bn_eps, momentum=1.0 - cfg.bn_momentum, name=name)(x)


def activation(x, kind, name):
    """torch activations by name. Keras 3's hard_silu / hard_sigmoid are torch's Hardswish /
    Hardsigmoid (relu6(x + 3) / 6 based; Keras 2's were 0.2x + 0.5); "gelu" is the exact erf form
    like nn.GELU(); leaky_relu has torch's default slope 0.01 (Keras' is 0.3)."""
    if kind == "relu":
        return keras.layers.ReLU(name=name)(x)
    if kind == "relu6":
        return keras.layers.ReLU(max_value=6.0, name=name)(x)
    if kind == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=0.01, name=name)(x)
    if kind == "hard_swish":
        return keras.layers.Activation("hard_silu", name=name)(x)
    if kind in ("silu", "gelu", "sigmoid", "hard_sigmoid"):
        return keras.layers.Activation(kind, name=name)(x)
    raise ValueError(f"unknown activation {kind!r}")


def cna_names(prefix, suffix="", act=True):
    """The common (conv, norm, act) naming: `<prefix>_conv<suffix>`, `_bn<suffix>`,
    `_act<suffix>` (no activation when act is False)."""
    return f"{prefix}_conv{suffix}", f"{prefix}_bn{suffix}", f"{prefix}_act{suffix}" if act else None


def conv_norm_act(x, filters, kernel, stride=1, *, names, cfg=TORCH, act=None, groups=1,
                  padding=None, dilation=1):
    """conv -> norm -> activation (timm `ConvNormAct`, torchvision `Conv2dNormActivation`).

    names: (conv, norm, activation) layer names; activation None for none. act overrides the
    network's activation (cfg.act) for this layer.
    """
    conv_name, norm_name, act_name = names
    x = conv2d(x, filters, kernel, stride, groups=groups, padding=padding, dilation=dilation,
               name=conv_name, cfg=cfg)
    x = norm(x, norm_name, cfg)
    return activation(x, act or cfg.act, act_name) if act_name else x


# torchvision BasicConv2d's nn.BatchNorm2d(out, eps=0.001) (GoogLeNet and Inception v3 weights were
# ported from TF), also timm's Inception v3 ConvNormAct(norm_kwargs=dict(eps=1e-3))
BASIC_CONV2D_BN_EPS = 1e-3


def basic_conv2d(x, filters, kernel, stride=1, padding=0, *, name, cfg=TORCH):
    """torchvision `BasicConv2d` (GoogLeNet, Inception v3): conv without bias and with padding 0
    unless given -> BN -> ReLU, named `<name>_conv`, `_bn`, `_act`."""
    return conv_norm_act(x, filters, kernel, stride, padding=padding, cfg=cfg,
                         names=cna_names(name))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def transform_input_layer(x, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="transform_input"):
    """torchvision's `_transform_input` (GoogLeNet, Inception v3): x_c * (std_c / 0.5) +
    (mean_c - 0.5) / 0.5 per channel, i.e. undo the ImageNet normalisation and apply the
    (x - 0.5) / 0.5 one the weights expect."""
    return keras.layers.Rescaling(scale=[s / 0.5 for s in std],
                                  offset=[(m - 0.5) / 0.5 for m in mean], name=name)(x)


@dataclass(frozen=True)
class SENaming:
    """The sub-layer names of a squeeze-excite (after `<prefix>_`), as the recipes map them.
    gate None: the gate is the expand conv's own activation (no separate layer)."""

    reduce: str
    expand: str
    gate: str | None
    scale: str


SE_FC = SENaming("se_fc1", "se_fc2", None, "se_gate")                          # ResNet, RegNet
SE_CONV = SENaming("conv_reduce", "conv_expand", "se_sigmoid", "se_gate")       # EfficientNet
SE_CONV_HARD = SENaming("conv_reduce", "conv_expand", "se_gate", "se_scale")    # MobileNetV3


def squeeze_excite(x, reduced, *, prefix, act="relu", gate="sigmoid", naming=SE_FC):
    """timm SqueezeExcite / SEModule, torchvision SqueezeExcitation: mean over H, W -> 1x1 conv
    (bias) -> act -> 1x1 conv (bias) -> gate (sigmoid, or hard_sigmoid in MobileNetV3) -> scale.
    A separate gate layer keeps the expand conv's output comparable with torch's pre-gate one."""
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_se_pool")(x)
    s = keras.layers.Conv2D(reduced, 1, use_bias=True, name=f"{prefix}_{naming.reduce}")(s)
    s = activation(s, act, f"{prefix}_se_act")
    s = keras.layers.Conv2D(x.shape[-1], 1, use_bias=True,
                            activation=None if naming.gate else gate,
                            name=f"{prefix}_{naming.expand}")(s)
    if naming.gate:
        s = activation(s, gate, f"{prefix}_{naming.gate}")
    return keras.layers.Multiply(name=f"{prefix}_{naming.scale}")([x, s])


def residual_add(y, shortcut, name, drop_path=0.0):
    """y + shortcut (`<name>_add`). drop_path: stochastic depth of training (timm DropPath,
    torchvision StochasticDepth "row"): drops the whole branch per sample and rescales by
    1 / (1 - rate), i.e. Dropout with a per-sample noise shape; the identity at inference."""
    if drop_path > 0:
        y = keras.layers.Dropout(drop_path, noise_shape=(None, 1, 1, 1),
                                 name=f"{name}_drop_path")(y)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def depthwise_separable(x, filters, kernel=3, stride=1, *, prefix, cfg=TORCH, act=None, se=None,
                        names=("conv_dw", "bn1", "act_dw", "conv_pw", "bn2", None), dilation=1):
    """depthwise conv -> norm [-> act] [-> squeeze-excite] -> 1x1 conv -> norm [-> act].

    names: the six sub-layer names after `<prefix>_` (dw conv, its norm, its activation, pw conv,
    its norm, its activation); an activation named None is left out. se: a function
    (x, prefix) -> x, e.g. a functools.partial of squeeze_excite.
    """
    dw, dw_norm, dw_act, pw, pw_norm, pw_act = (n and f"{prefix}_{n}" for n in names)
    x = norm(depthwise(x, kernel, stride, name=dw, cfg=cfg, dilation=dilation), dw_norm, cfg)
    if dw_act:
        x = activation(x, act or cfg.act, dw_act)
    if se is not None:
        x = se(x, prefix=prefix)
    return conv_norm_act(x, filters, 1, names=(pw, pw_norm, pw_act), cfg=cfg, act=act)


def inverted_residual(x, mid_ch, out_ch, kernel, stride, *, prefix, cfg=TORCH, act=None, se=None,
                      act_names=("act1", "act_dw"), drop_path=0.0, dilation=1):
    """MBConv (MobileNetV2/V3, MNASNet, EfficientNet): 1x1 expansion (skipped when mid == in:
    timm's depthwise-separable block) -> depthwise -> [squeeze-excite] -> linear 1x1 projection,
    residual when the shape is kept. Sub-layers carry timm's names (conv_pw, bn1, conv_dw, bn2,
    conv_pwl, bn3; without expansion conv_dw, bn1, conv_pw, bn2); act_names are the names of the
    expansion's and the depthwise conv's activations."""
    shortcut, in_ch = x, x.shape[-1]
    if mid_ch != in_ch:
        x = conv_norm_act(x, mid_ch, 1, cfg=cfg, act=act, names=(
            f"{prefix}_conv_pw", f"{prefix}_bn1", f"{prefix}_{act_names[0]}"))
        names = ("conv_dw", "bn2", act_names[1], "conv_pwl", "bn3", None)
    else:
        names = ("conv_dw", "bn1", act_names[1], "conv_pw", "bn2", None)
    x = depthwise_separable(x, out_ch, kernel, stride, prefix=prefix, cfg=cfg, act=act, se=se,
                            names=names, dilation=dilation)
    if stride == 1 and in_ch == out_ch:
        x = residual_add(x, shortcut, prefix, drop_path)
    return x


def stage_end(x, name, reduction):
    """Marks x as the output of feature stage `name` (`stage<i>`, the names the recipes'
    `features:` pairs use) with its reduction; see zoo.models.feature_info."""
    return FeatureStage(reduction, name=name)(x)


def feature_layers(model):
    """The FeatureStage layers of a model, in graph order."""
    return [layer for layer in model.layers if isinstance(layer, FeatureStage)]


def input_layer(input_shape, in_chans=3):
    shape = tuple(input_shape) if input_shape is not None else (None, None, in_chans)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    return keras.Input(shape, name="pixels")


def pooled_top(dropout=0.0, pre_logits=None, keepdims=False):
    """The usual classifier: global average pool (`avg_pool`) [-> pre_logits] [-> Dropout
    `head_drop`] -> Dense `predictions`. keepdims when pre_logits starts with a 1x1 conv."""
    def top(x, classes, classifier_activation):
        x = keras.layers.GlobalAveragePooling2D(keepdims=keepdims, name="avg_pool")(x)
        if pre_logits is not None:
            x = pre_logits(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name="head_drop")(x)
        return keras.layers.Dense(classes, activation=classifier_activation,
                                  name="predictions")(x)
    return top


def flatten_mlp_top(pool_size, hidden, dropout, dropout_first):
    """torchvision's VGG/AlexNet classifier: AdaptiveAvgPool2d -> flatten -> 3 Linear layers.

    Keras flattens NHWC features in (H, W, C) order where torch flattens NCHW in (C, H, W): the
    first Dense kernel must be converted with `linear_after_flatten`, not `linear`.
    AlexNet puts each Dropout before its Linear, VGG after the ReLU (`dropout_first`); dropout
    is the identity at inference, so only training differs.
    """
    def top(x, classes, classifier_activation):
        x = AdaptiveAvgPool2D(pool_size, name="avgpool")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        for i in (1, 2):
            if dropout_first:
                x = keras.layers.Dropout(dropout, name=f"drop{i}")(x)
            x = keras.layers.Dense(hidden, name=f"fc{i}")(x)
            x = keras.layers.ReLU(name=f"fc{i}_act")(x)
            if not dropout_first:
                x = keras.layers.Dropout(dropout, name=f"drop{i}")(x)
        return keras.layers.Dense(classes, activation=classifier_activation,
                                  name="predictions")(x)
    return top


def _ending(inputs, x, top, *, include_top, pooling, classes, classifier_activation,
            features_only, name):
    """keras.applications-style ending: classifier, pooled features, or the stage outputs."""
    if features_only:
        stages = feature_layers(keras.Model(inputs, x))
        return keras.Model(inputs, [layer.output for layer in stages], name=name)
    # tokens (B, N, C) (vision transformers) pool over the token axis, maps over H and W
    one_d = len(x.shape) == 3
    if include_top:
        x = (top or pooled_top())(x, classes, classifier_activation)
    elif pooling == "avg":
        pool = keras.layers.GlobalAveragePooling1D if one_d else keras.layers.GlobalAveragePooling2D
        x = pool(name="avg_pool")(x)
    elif pooling == "max":
        pool = keras.layers.GlobalMaxPooling1D if one_d else keras.layers.GlobalMaxPooling2D
        x = pool(name="max_pool")(x)
    elif pooling is not None:
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    return keras.Model(inputs, x, name=name)


def _load_weights(model, weights):
    """keras.applications' `weights=` argument: None or a local `.weights.h5` file."""
    if weights is None:
        return model
    if not str(weights).endswith(".weights.h5"):
        raise ValueError(f"weights must be None or a path to a .weights.h5 file, got {weights!r} "
                         "(use zoo.create_model(name, pretrained=...) for catalogue weights)")
    model.load_weights(weights)
    return model


_APPLICATION_ARGS = dict(include_top=True, weights=None, input_shape=None, pooling=None,
                         classes=1000, classifier_activation=None, features_only=False, name=None)


def application(default_name, **defaults):
    """Decorates `body(inputs, *architecture args)`, which returns the features tensor (where
    `include_top=False` ends) or (features, top) with its own classifier `top(x, classes,
    classifier_activation)` (default: `pooled_top()`), into a builder with the keras.applications
    arguments: include_top, weights, input_shape, pooling, classes, classifier_activation, plus
    features_only (the FeatureStage outputs) and name (default_name, or a function of the
    architecture arguments). Builders return logits by default, as the torch models do.
    defaults: other defaults for these arguments (e.g. classes=10)."""
    unknown = set(defaults) - set(_APPLICATION_ARGS)
    if unknown:
        raise TypeError(f"application() has no argument(s) {sorted(unknown)}")
    app_defaults = {**_APPLICATION_ARGS, **defaults}

    def wrap(body):
        signature = inspect.signature(body)

        @functools.wraps(body)
        def builder(*args, **kwargs):
            app = {k: kwargs.pop(k, v) for k, v in app_defaults.items()}
            inputs = input_layer(app["input_shape"])
            out = body(inputs, *args, **kwargs)
            x, top = out if isinstance(out, tuple) else (out, None)
            if app["name"] is None:
                if callable(default_name):
                    bound = signature.bind(inputs, *args, **kwargs)
                    bound.apply_defaults()
                    app["name"] = default_name(**dict(list(bound.arguments.items())[1:]))
                else:
                    app["name"] = default_name
            weights = app.pop("weights")
            del app["input_shape"]
            return _load_weights(_ending(inputs, x, top, **app), weights)

        params = list(signature.parameters.values())[1:]
        params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
                   for k, v in app_defaults.items()]
        builder.__signature__ = signature.replace(parameters=params)
        return builder
    return wrap
