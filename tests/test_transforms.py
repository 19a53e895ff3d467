"""Every weight transform against a real torch layer and its Keras twin (random, perturbed weights).

Each test converts a torch layer's state_dict with the transform exactly as the mapping engine does
(`fn(array, target_shape=keras_shape, **args)`), runs both layers on the same random input (NCHW
for torch, NHWC for Keras) and requires max|keras - torch| / max|torch| <= 1e-5.
"""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import keras
import numpy as np
import pytest
import torch
from torch import nn

from zoo.transforms import TRANSFORMS

TOL = 1e-5
TESTED = {"conv2d", "conv1d", "embedding", "depthwise", "linear", "linear_after_flatten", "batchnorm",
          "layernorm", "groupnorm", "prelu", "identity", "mha_in_proj"}


# ---------------------------------------------------------------------------------------- helpers

def perturb(module, seed=0):
    """Replace every parameter and float buffer with non-default random values (fixed seed)."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            v = rng.standard_normal(tuple(t.shape)).astype(np.float32)
            if name.endswith("running_var"):
                v = rng.uniform(0.5, 2.0, tuple(t.shape)).astype(np.float32)
            elif name.endswith("weight") and t.ndim == 1:   # norm scales / PReLU slopes
                v = rng.uniform(0.5, 1.5, tuple(t.shape)).astype(np.float32)
            t.copy_(torch.from_numpy(v))
    return module.eval()


def load(torch_module, keras_layer, transform, **args):
    """Convert torch_module's tensors into keras_layer's variables with TRANSFORMS[transform]."""
    t = TRANSFORMS[transform]
    t.check_args(args)
    kvars = {v.path.rsplit("/", 1)[-1]: v for v in keras_layer.weights}
    assigned = set()
    for leaf, tensor in torch_module.state_dict().items():
        if leaf.endswith("num_batches_tracked"):
            continue
        spec = t.leaf(leaf)
        assert spec is not None, f"{transform} has no leaf {leaf!r}"
        kname, fn = spec
        var = kvars[kname]
        arr = fn(tensor.detach().numpy(), target_shape=tuple(var.shape), **args)
        assert tuple(arr.shape) == tuple(var.shape), (leaf, arr.shape, var.shape)
        var.assign(arr)
        assigned.add(kname)
    assert assigned == set(kvars), f"keras variables never assigned: {set(kvars) - assigned}"


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def to_nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def rel_err(got, ref):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def image(n=2, h=9, w=11, c=8, seed=1):
    return np.random.default_rng(seed).standard_normal((n, h, w, c)).astype(np.float32)


def test_every_registered_transform_has_a_parity_test():
    assert set(TRANSFORMS) == TESTED


# ------------------------------------------------------------------------------------------ conv2d

@pytest.mark.parametrize("kernel, stride, padding, groups, dilation, bias", [
    (3, 1, 1, 1, 1, True),              # plain
    (1, 1, 0, 1, 1, False),             # pointwise
    ((1, 7), 2, (0, 3), 1, 1, True),    # strided, asymmetric kernel
    ((7, 1), 1, (3, 0), 1, 1, False),
    (3, 2, 1, 4, 1, True),              # grouped (ResNeXt), strided
    (3, 1, 2, 1, 2, True),              # dilated
], ids=["plain", "1x1", "1x7_s2", "7x1", "groups4_s2", "dilated"])
def test_conv2d(kernel, stride, padding, groups, dilation, bias):
    tm = perturb(nn.Conv2d(8, 12, kernel, stride=stride, padding=padding, groups=groups,
                           dilation=dilation, bias=bias))
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    conv = keras.layers.Conv2D(12, kernel, strides=stride, padding="valid", groups=groups,
                               dilation_rate=dilation, use_bias=bias)
    km = keras.Sequential([keras.Input((9, 11, 8)), keras.layers.ZeroPadding2D(((ph, ph), (pw, pw))),
                           conv])
    load(tm, conv, "conv2d")
    assert TRANSFORMS["conv2d"].check(tm, conv, {}) == []
    x = image()
    with torch.no_grad():
        ref = to_nhwc(tm(nchw(x)))
    assert rel_err(km(x), ref) <= TOL


# ------------------------------------------------------------------------------------------ conv1d

@pytest.mark.parametrize("kernel, stride, padding, groups, dilation", [
    (9, 2, 4, 1, 1), (1, 1, 0, 1, 1), (3, 1, 2, 4, 2)], ids=["k9_s2", "pointwise", "groups4_dilated"])
def test_conv1d(kernel, stride, padding, groups, dilation):
    """torch (N, C, L) vs Keras (N, L, C): the kernel taps keep their order (a reversed kernel is
    a correlation/convolution mix-up that symmetric kernels would hide: the weights are random)."""
    tm = perturb(nn.Conv1d(8, 12, kernel, stride=stride, padding=padding, groups=groups,
                           dilation=dilation))
    conv = keras.layers.Conv1D(12, kernel, strides=stride, groups=groups, dilation_rate=dilation)
    km = keras.Sequential([keras.Input((37, 8)), keras.layers.ZeroPadding1D(padding), conv])
    load(tm, conv, "conv1d")
    assert TRANSFORMS["conv1d"].check(tm, conv, {}) == []
    x = np.random.default_rng(2).standard_normal((2, 37, 8)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))).numpy()
    assert rel_err(km(x), ref.transpose(0, 2, 1)) <= TOL
    assert TRANSFORMS["conv1d"].check(tm, keras.layers.Conv1D(12, kernel, strides=stride + 1,
                                                              groups=groups), {})


# --------------------------------------------------------------------------------------- embedding

def test_embedding():
    tm = perturb(nn.Embedding(50, 6))
    layer = keras.layers.Embedding(50, 6)
    layer.build((None, 7))
    load(tm, layer, "embedding")
    ids = np.random.default_rng(3).integers(0, 50, (2, 7))
    with torch.no_grad():
        ref = tm(torch.from_numpy(ids)).numpy()
    assert rel_err(layer(ids), ref) == 0.0


# --------------------------------------------------------------------------------------- depthwise

@pytest.mark.parametrize("multiplier, stride", [(1, 1), (2, 1), (2, 2)])
def test_depthwise(multiplier, stride):
    c = 8
    tm = perturb(nn.Conv2d(c, c * multiplier, 3, stride=stride, padding=1, groups=c, bias=True))
    dw = keras.layers.DepthwiseConv2D(3, strides=stride, depth_multiplier=multiplier,
                                      padding="valid", use_bias=True)
    km = keras.Sequential([keras.Input((9, 11, c)), keras.layers.ZeroPadding2D(1), dw])
    load(tm, dw, "depthwise")
    assert TRANSFORMS["depthwise"].check(tm, dw, {}) == []
    x = image(c=c)
    with torch.no_grad():
        ref = to_nhwc(tm(nchw(x)))
    assert rel_err(km(x), ref) <= TOL


# ------------------------------------------------------------------------------------------ linear

@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias):
    tm = perturb(nn.Linear(16, 10, bias=bias))
    dense = keras.layers.Dense(10, use_bias=bias)
    dense.build((None, 16))
    load(tm, dense, "linear")
    x = np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    assert rel_err(dense(x), ref) <= TOL


def test_mha_in_proj():
    """nn.MultiheadAttention's packed in_proj -> one Dense (3E) -> FusedQKVAttention -> Dense
    out_proj equals the torch module (self-attention, batch_first)."""
    from zoo.layers.attention import FusedQKVAttention

    dim, heads, n = 24, 4, 7
    tm = perturb(nn.MultiheadAttention(dim, heads, batch_first=True))
    qkv, out = keras.layers.Dense(3 * dim), keras.layers.Dense(dim)
    inp = keras.Input((n, dim))
    km = keras.Model(inp, out(FusedQKVAttention(heads)(qkv(inp))))
    load_leaves = {"in_proj_weight": tm.in_proj_weight, "in_proj_bias": tm.in_proj_bias}
    t = TRANSFORMS["mha_in_proj"]
    for leaf, tensor in load_leaves.items():
        kname, fn = t.leaf(leaf)
        var = {"kernel": qkv.kernel, "bias": qkv.bias}[kname]
        var.assign(fn(tensor.detach().numpy(), target_shape=tuple(var.shape)))
    load(tm.out_proj, out, "linear")
    x = np.random.default_rng(2).standard_normal((3, n, dim)).astype(np.float32)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        ref = tm(xt, xt, xt, need_weights=False)[0].numpy()
    assert rel_err(km(x), ref) <= TOL


def _flatten_pair(c=3, h=5, w=4, out=7):
    """torch: Conv -> (N, C, H, W) -> flatten -> Linear; keras: Conv -> NHWC -> Flatten -> Dense.
    H != W and C differs from both, so any wrong (C, H, W) order shows."""
    tconv = perturb(nn.Conv2d(2, c, 3, padding=1), seed=3)
    tfc = perturb(nn.Linear(c * h * w, out), seed=4)
    tm = nn.Sequential(tconv, nn.Flatten(), tfc).eval()
    kconv = keras.layers.Conv2D(c, 3, padding="same")
    kfc = keras.layers.Dense(out)
    km = keras.Sequential([keras.Input((h, w, 2)), kconv, keras.layers.Flatten(), kfc])
    load(tconv, kconv, "conv2d")
    x = image(n=3, h=h, w=w, c=2, seed=5)
    with torch.no_grad():
        ref = tm(nchw(x)).numpy()
    return tfc, kfc, km, x, ref, [c, h, w]


def test_linear_after_flatten():
    tfc, kfc, km, x, ref, chw = _flatten_pair()
    load(tfc, kfc, "linear_after_flatten", chw=chw)
    assert rel_err(km(x), ref) <= TOL


def test_linear_after_flatten_pitfall_plain_linear_is_wrong():
    """The named pitfall: a Linear after an NCHW flatten converted with the plain `linear`
    transform has the right shape but the wrong row order, so the outputs are garbage."""
    tfc, kfc, km, x, ref, _chw = _flatten_pair()
    load(tfc, kfc, "linear")            # shapes agree, nothing complains ...
    assert rel_err(km(x), ref) > 0.1    # ... and the result is wrong


def test_large_kernels_copied_in_slabs_keep_parity():
    """Kernels above _SLAB_MIN_BYTES take the slab-by-slab copy (VGG/AlexNet's classifiers);
    output channels that are no multiple of the slab width leave a partial last slab."""
    from zoo.transforms import _SLAB, _SLAB_MIN_BYTES, ALIGNMENT

    fc = perturb(nn.Linear(1100, 1000), seed=6)                    # 4.4 MB
    conv = perturb(nn.Conv2d(512, 300, 3, padding=1), seed=7)      # 5.5 MB
    for m in (fc, conv):
        assert m.weight.numel() * 4 > _SLAB_MIN_BYTES and m.weight.shape[0] % _SLAB
    dense, kconv = keras.layers.Dense(1000), keras.layers.Conv2D(300, 3, padding="same")
    dense.build((None, 1100))
    kconv.build((None, 5, 6, 512))
    load(fc, dense, "linear")
    load(conv, kconv, "conv2d")
    x = np.random.default_rng(8).standard_normal((2, 1100)).astype(np.float32)
    with torch.no_grad():
        assert rel_err(dense(x), fc(torch.from_numpy(x)).numpy()) <= TOL
        xi = image(n=1, h=5, w=6, c=512, seed=9)
        assert rel_err(kconv(xi), to_nhwc(conv(nchw(xi)))) <= TOL
    kernel = TRANSFORMS["linear"].leaf("weight")[1](fc.weight.detach().numpy())
    assert kernel.flags.c_contiguous and kernel.ctypes.data % ALIGNMENT == 0

    # linear_after_flatten at that size: 1001 outputs after a (64, 5, 4) map
    tconv = perturb(nn.Conv2d(2, 64, 3, padding=1), seed=10)
    tfc = perturb(nn.Linear(64 * 5 * 4, 1001), seed=11)
    tm = nn.Sequential(tconv, nn.Flatten(), tfc).eval()
    kc, kfc = keras.layers.Conv2D(64, 3, padding="same"), keras.layers.Dense(1001)
    km = keras.Sequential([keras.Input((5, 4, 2)), kc, keras.layers.Flatten(), kfc])
    load(tconv, kc, "conv2d")
    load(tfc, kfc, "linear_after_flatten", chw=[64, 5, 4])
    x = image(n=2, h=5, w=4, c=2, seed=12)
    with torch.no_grad():
        assert rel_err(km(x), tm(nchw(x)).numpy()) <= TOL


def test_linear_after_flatten_rejects_wrong_chw():
    fn = TRANSFORMS["linear_after_flatten"].leaf("weight")[1]
    with pytest.raises(ValueError, match="C\\*H\\*W"):
        fn(np.zeros((7, 60), np.float32), target_shape=(60, 7), chw=[3, 5, 5])
    with pytest.raises(ValueError, match="needs args"):
        TRANSFORMS["linear_after_flatten"].check_args({})


# --------------------------------------------------------------------------------------- batchnorm

@pytest.mark.parametrize("eps", [1e-3, 1e-5])
def test_batchnorm(eps):
    tm = perturb(nn.BatchNorm2d(8, eps=eps))
    assert not torch.all(tm.running_mean == 0) and not torch.all(tm.running_var == 1)
    bn = keras.layers.BatchNormalization(epsilon=eps, momentum=0.9)
    bn.build((None, 9, 11, 8))
    load(tm, bn, "batchnorm")
    assert TRANSFORMS["batchnorm"].check(tm, bn, {}) == []
    x = image()
    with torch.no_grad():
        ref = to_nhwc(tm(nchw(x)))
    assert rel_err(bn(x, training=False), ref) <= TOL


# --------------------------------------------------------------------------------------- layernorm

@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_layernorm_channels_last(eps):
    tm = perturb(nn.LayerNorm(8, eps=eps))
    ln = keras.layers.LayerNormalization(axis=-1, epsilon=eps)
    ln.build((None, 9, 11, 8))
    load(tm, ln, "layernorm")
    assert TRANSFORMS["layernorm"].check(tm, ln, {}) == []
    x = image()
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()     # channels-last: normalise the last axis
    assert rel_err(ln(x), ref) <= TOL


# --------------------------------------------------------------------------------------- groupnorm

@pytest.mark.parametrize("groups, eps", [(2, 1e-5), (4, 1e-6), (8, 1e-5)])
def test_groupnorm(groups, eps):
    tm = perturb(nn.GroupNorm(groups, 8, eps=eps))
    gn = keras.layers.GroupNormalization(groups=groups, axis=-1, epsilon=eps)
    gn.build((None, 9, 11, 8))
    load(tm, gn, "groupnorm")
    assert TRANSFORMS["groupnorm"].check(tm, gn, {}) == []
    x = image()
    with torch.no_grad():
        ref = to_nhwc(tm(nchw(x)))
    assert rel_err(gn(x), ref) <= TOL


# ------------------------------------------------------------------------------------------- prelu

@pytest.mark.parametrize("num_parameters", [8, 1])
def test_prelu(num_parameters):
    tm = nn.PReLU(num_parameters=num_parameters).eval()
    with torch.no_grad():   # non-default slopes, both signs, differing per channel
        tm.weight.copy_(torch.from_numpy(
            np.random.default_rng(6).uniform(-0.9, 0.9, num_parameters).astype(np.float32)))
    pr = keras.layers.PReLU(shared_axes=[1, 2])
    pr.build((None, 9, 11, 8))
    load(tm, pr, "prelu")
    x = image()
    with torch.no_grad():
        ref = to_nhwc(tm(nchw(x)))
    assert rel_err(pr(x), ref) <= TOL


# ---------------------------------------------------------------------------------------- identity

class _TorchLayerScale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((c,), 1e-6))
        self.beta = nn.Parameter(torch.zeros(c))

    def forward(self, x):   # NCHW
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


class _KerasLayerScale(keras.layers.Layer):
    def build(self, input_shape):
        c = input_shape[-1]
        self.gamma = self.add_weight(shape=(c,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(c,), initializer="zeros", name="beta")

    def call(self, x):
        return x * self.gamma + self.beta


def test_identity_passthrough():
    tm = perturb(_TorchLayerScale(8))
    ks = _KerasLayerScale()
    ks.build((None, 9, 11, 8))
    assert TRANSFORMS["identity"].leaf("anything")[0] == "anything"
    load(tm, ks, "identity")
    x = image()
    with torch.no_grad():
        ref = to_nhwc(tm(nchw(x)))
    assert rel_err(ks(x), ref) <= TOL


# ------------------------------------------------------------------------------------- check hooks

def test_check_batchnorm_eps_mismatch():
    problems = TRANSFORMS["batchnorm"].check(nn.BatchNorm2d(8, eps=1e-5),
                                             keras.layers.BatchNormalization(epsilon=1e-3,
                                                                             momentum=0.9), {})
    assert problems and any("eps" in p and "1e-05" in p and "0.001" in p for p in problems), problems


def test_check_batchnorm_momentum_mismatch():
    problems = TRANSFORMS["batchnorm"].check(nn.BatchNorm2d(8, eps=1e-5, momentum=0.1),
                                             keras.layers.BatchNormalization(epsilon=1e-5,
                                                                             momentum=0.99), {})
    assert len(problems) == 1 and "momentum" in problems[0] and "0.99" in problems[0], problems


def test_check_batchnorm_keras_default_has_both_problems():
    problems = TRANSFORMS["batchnorm"].check(nn.BatchNorm2d(8), keras.layers.BatchNormalization(), {})
    assert len(problems) == 2, problems


def test_check_conv_stride_mismatch():
    problems = TRANSFORMS["conv2d"].check(nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                          keras.layers.Conv2D(8, 3, strides=1), {})
    assert problems and any("stride" in p for p in problems), problems
    assert TRANSFORMS["conv2d"].check(nn.Conv2d(8, 8, 3, stride=2),
                                      keras.layers.Conv2D(8, 3, strides=2), {}) == []


def test_check_conv_dilation_and_groups_mismatch():
    problems = TRANSFORMS["conv2d"].check(nn.Conv2d(8, 8, 3, dilation=2, groups=4),
                                          keras.layers.Conv2D(8, 3, dilation_rate=1, groups=2), {})
    assert any("dilation" in p for p in problems), problems
    assert any("groups" in p for p in problems), problems


def test_check_depthwise_ignores_groups_but_checks_stride():
    dw = TRANSFORMS["depthwise"]
    assert dw.check(nn.Conv2d(8, 8, 3, groups=8), keras.layers.DepthwiseConv2D(3), {}) == []
    problems = dw.check(nn.Conv2d(8, 8, 3, stride=2, groups=8), keras.layers.DepthwiseConv2D(3), {})
    assert any("stride" in p for p in problems), problems


def test_check_layernorm_and_groupnorm():
    assert TRANSFORMS["layernorm"].check(nn.LayerNorm(8, eps=1e-6),
                                         keras.layers.LayerNormalization(epsilon=1e-3), {})
    problems = TRANSFORMS["groupnorm"].check(nn.GroupNorm(4, 8, eps=1e-5),
                                             keras.layers.GroupNormalization(groups=2, epsilon=1e-5),
                                             {})
    assert len(problems) == 1 and "num_groups" in problems[0], problems
