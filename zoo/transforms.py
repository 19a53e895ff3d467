"""The one registry of weight transforms (PyTorch layout -> Keras layout).

A transform converts the tensors of one PyTorch *module* (its state_dict leaves, e.g. ``weight``,
``bias``, ``running_mean``) into the variables of one Keras *layer* (``kernel``, ``gamma`` ...).
Functions are pure NumPy so that recipes can be validated without torch. Each transform can also
check the hyper-parameters that shapes cannot reveal (BatchNorm eps/momentum, conv strides), which
is where a copy that "looks right" usually goes wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

LeafFn = Callable[..., np.ndarray]   # fn(array, target_shape, **args) -> array


@dataclass(frozen=True)
class Transform:
    name: str
    leaves: dict[str, tuple[str, LeafFn]]   # torch leaf -> (keras variable name, fn)
    doc: str
    required_args: tuple[str, ...] = ()
    optional_args: tuple[str, ...] = ()
    # check(torch_module, keras_layer, args) -> list of problems
    check: Callable | None = field(default=None, repr=False)
    passthrough: bool = False   # any leaf maps to the same name unchanged (identity)

    def check_args(self, args: dict) -> None:
        missing = [a for a in self.required_args if a not in args]
        unknown = [a for a in args if a not in self.required_args + self.optional_args]
        if missing:
            raise ValueError(f"transform {self.name!r} needs args {missing}")
        if unknown:
            raise ValueError(f"transform {self.name!r} does not take args {unknown}")

    def leaf(self, torch_leaf: str):
        """(keras variable name, fn) for a torch leaf, or None if this transform has no such leaf."""
        if self.passthrough:
            return torch_leaf, _same
        return self.leaves.get(torch_leaf)


TRANSFORMS: dict[str, Transform] = {}


def register(t: Transform) -> Transform:
    if t.name in TRANSFORMS:
        raise ValueError(f"transform {t.name!r} registered twice")
    TRANSFORMS[t.name] = t
    return t


def _same(a, target_shape=None, **_):
    return a


# Below this size numpy's one-pass transposing copy is as fast as any other.
_SLAB_MIN_BYTES = 4 << 20
_SLAB = 16
# TensorFlow's CPU kernels assume buffers aligned to Eigen's widest vector (64 bytes); an array
# aligned so can become a variable's storage without a copy (mapping.apply_plan).
ALIGNMENT = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """np.empty whose data starts on an ALIGNMENT-byte boundary (numpy guarantees only 16)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _out_channels_last(a, axes):
    """a.transpose(axes) as a new C-contiguous array, where axes moves torch's output-channel
    axis 0 to Keras's last axis (every kernel layout here). A large one is copied in slabs of
    16 output channels: numpy's one-pass copy writes a whole column per source row and misses
    cache on nearly every write (VGG's 4096x25088 fc6: 0.65 s in one pass, 0.19 s in slabs),
    which made mapping slower than building the model for AlexNet and VGG."""
    axes = tuple(axes)
    if axes[-1] != 0 or a.nbytes < _SLAB_MIN_BYTES:
        return np.ascontiguousarray(a.transpose(axes))
    out = aligned_empty([a.shape[i] for i in axes], a.dtype)
    for i in range(0, a.shape[0], _SLAB):
        out[..., i:i + _SLAB] = a[i:i + _SLAB].transpose(axes)
    return out


def _conv_kernel(a, target_shape=None, **_):
    # torch (out, in/groups, *spatial) -> keras (*spatial, in/groups, out), any spatial rank
    return _out_channels_last(a, (*range(2, a.ndim), 1, 0))


def _depthwise_kernel(a, target_shape, **_):
    # torch (C*m, 1, kh, kw), output channel c*m + j  -> keras (kh, kw, C, m)
    kh, kw, c, m = target_shape
    return a.reshape(c, m, a.shape[2], a.shape[3]).transpose(2, 3, 0, 1)


def _linear_kernel(a, target_shape=None, **_):
    return _out_channels_last(a, (1, 0))


def _linear_after_flatten(a, target_shape=None, chw=None, **_):
    # torch flattens NCHW features as (C, H, W); keras flattens NHWC as (H, W, C): reorder rows.
    c, h, w = chw
    out = a.shape[0]
    if a.shape[1] != c * h * w:
        raise ValueError(f"linear_after_flatten: in_features {a.shape[1]} != C*H*W = {c * h * w}")
    return _out_channels_last(a.reshape(out, c, h, w), (2, 3, 1, 0)).reshape(h * w * c, out)


def _prelu_alpha(a, target_shape, **_):
    if a.size == int(np.prod(target_shape)):
        return a.reshape(target_shape)
    if a.size == 1:   # torch PReLU(num_parameters=1) shares one slope over channels
        return np.full(target_shape, a.reshape(()), dtype=a.dtype)
    return a


def _keras_attr(layer, *names):
    for n in names:
        if hasattr(layer, n):
            return getattr(layer, n)
    return None


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _check_conv(module, layer, args):
    problems = []
    for t_attr, k_attr in (("stride", "strides"), ("dilation", "dilation_rate")):
        tv, kv = getattr(module, t_attr, None), _keras_attr(layer, k_attr)
        if tv is not None and kv is not None and _pair(tv) != _pair(kv):
            problems.append(f"{t_attr} {_pair(tv)} != keras {k_attr} {_pair(kv)}")
    tg, kg = getattr(module, "groups", None), _keras_attr(layer, "groups")
    if tg is not None and kg is not None and tg != kg and type(layer).__name__ != "DepthwiseConv2D":
        problems.append(f"groups {tg} != keras groups {kg}")
    # weight-standardised convs (timm StdConv2d) carry an eps; a plain Conv2D would compute
    # something else with the very same variables
    t_eps = getattr(module, "eps", None)
    if t_eps is not None:
        k_eps = _keras_attr(layer, "eps")
        if k_eps is None:
            problems.append(f"{type(module).__name__} standardises its weight (eps {t_eps}) but "
                            f"keras {type(layer).__name__} does not")
        elif not np.isclose(t_eps, k_eps, rtol=1e-6, atol=0):
            problems.append(f"weight standardisation eps {t_eps} != keras eps {k_eps}")
    return problems


def _check_eps(module, layer, args):
    tv, kv = getattr(module, "eps", None), _keras_attr(layer, "epsilon")
    if tv is not None and kv is not None and not np.isclose(tv, kv, rtol=1e-6, atol=0):
        return [f"eps {tv} != keras epsilon {kv}"]
    return []


def _check_batchnorm(module, layer, args):
    problems = _check_eps(module, layer, args)
    tm, km = getattr(module, "momentum", None), _keras_attr(layer, "momentum")
    # torch momentum weights the new batch, keras momentum the running value.
    if tm is not None and km is not None and not np.isclose(1 - tm, km, atol=1e-6):
        problems.append(f"momentum {tm} needs keras momentum {1 - tm}, got {km}")
    return problems


def _check_groupnorm(module, layer, args):
    problems = _check_eps(module, layer, args)
    tg, kg = getattr(module, "num_groups", None), _keras_attr(layer, "groups")
    if tg is not None and kg is not None and tg != kg:
        problems.append(f"num_groups {tg} != keras groups {kg}")
    return problems


_BIAS = ("bias", _same)
register(Transform("conv2d", {"weight": ("kernel", _conv_kernel), "bias": _BIAS},
                   "Conv2d (out, in/g, kh, kw) -> Conv2D kernel (kh, kw, in/g, out); also grouped "
                   "convs.", check=_check_conv))
register(Transform("conv1d", {"weight": ("kernel", _conv_kernel), "bias": _BIAS},
                   "Conv1d (out, in/g, k) -> Conv1D kernel (k, in/g, out) (NCL -> NLC layout).",
                   check=_check_conv))
register(Transform("depthwise", {"weight": ("kernel", _depthwise_kernel), "bias": _BIAS},
                   "Conv2d with groups == in_channels (C*m, 1, kh, kw) -> DepthwiseConv2D "
                   "(kh, kw, C, m).", check=_check_conv))
register(Transform("linear", {"weight": ("kernel", _linear_kernel), "bias": _BIAS},
                   "Linear (out, in) -> Dense kernel (in, out)."))
register(Transform("linear_after_flatten",
                   {"weight": ("kernel", _linear_after_flatten), "bias": _BIAS},
                   "Linear that follows a flatten of NCHW (C, H, W) features: rows reordered to "
                   "the NHWC flatten order (H, W, C). args: chw: [C, H, W].",
                   required_args=("chw",)))
register(Transform("mha_in_proj", {"in_proj_weight": ("kernel", _linear_kernel),
                                   "in_proj_bias": _BIAS},
                   "nn.MultiheadAttention's packed in_proj_weight (3E, E) / in_proj_bias -> one "
                   "Dense (E, 3E) whose features are (q|k|v, heads, head_dim), the layout "
                   "zoo.layers.attention.FusedQKVAttention splits (timm's fused qkv Linear too)."))
register(Transform("embedding", {"weight": ("embeddings", _same)},
                   "Embedding (num_embeddings, dim) -> Embedding embeddings, unchanged (token ids "
                   "index rows in both)."))
register(Transform("batchnorm", {"weight": ("gamma", _same), "bias": ("beta", _same),
                                 "running_mean": ("moving_mean", _same),
                                 "running_var": ("moving_variance", _same)},
                   "BatchNorm2d -> BatchNormalization; eps and momentum (1 - torch) are checked. "
                   "num_batches_tracked must be listed under ignore.", check=_check_batchnorm))
register(Transform("layernorm", {"weight": ("gamma", _same), "bias": ("beta", _same)},
                   "LayerNorm (channels-last) -> LayerNormalization; eps is checked.",
                   check=_check_eps))
register(Transform("groupnorm", {"weight": ("gamma", _same), "bias": ("beta", _same)},
                   "GroupNorm -> GroupNormalization(axis=-1); eps and groups are checked.",
                   check=_check_groupnorm))
register(Transform("prelu", {"weight": ("alpha", _prelu_alpha)},
                   "PReLU slope (C,) -> PReLU alpha (1, 1, C) with shared_axes=[1, 2]."))
register(Transform("identity", {}, "Every leaf copied unchanged to the Keras variable of the same "
                                   "name (layer scale, GRN gamma/beta, custom layers).",
                   passthrough=True))
