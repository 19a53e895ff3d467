"""zoo.layers.StdConv2D against timm's StdConv2d (weight standardisation, BiT ResNetV2)."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from timm.layers import StdConv2d

from zoo.layers.std_conv import StdConv2D
from zoo.transforms import TRANSFORMS


def _torch_layer(cin, cout, k, stride, groups, bias, eps, seed=0):
    torch.manual_seed(seed)
    conv = StdConv2d(cin, cout, k, stride=stride, groups=groups, bias=bias, eps=eps)
    with torch.no_grad():   # a non-zero mean per filter, so the standardisation has work to do
        conv.weight.mul_(3.0).add_(torch.randn(cout, 1, 1, 1))
        if bias:
            conv.bias.normal_()
    return conv


def _keras_layer(conv, eps):
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    layer = StdConv2D(conv.out_channels, k, strides=s, groups=conv.groups,
                      use_bias=conv.bias is not None, eps=eps,
                      padding="same" if s == 1 and p == k // 2 else "valid")
    layer.build((None, None, None, conv.in_channels))
    t = TRANSFORMS["conv2d"]
    for leaf, tensor in conv.state_dict().items():
        var_name, fn = t.leaf(leaf)
        var = getattr(layer, var_name)
        var.assign(fn(tensor.numpy(), target_shape=tuple(var.shape)))
    return layer


def _run(layer, conv, x):
    pad = conv.padding[0]
    xk = x
    if layer.padding == "valid" and pad:
        xk = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    got = np.asarray(layer(xk))
    with torch.no_grad():
        ref = conv(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    return got, ref


CASES = [  # cin, cout, kernel, stride, groups, bias, eps
    (3, 16, 7, 2, 1, False, 1e-8),    # BiT stem
    (16, 32, 1, 1, 1, False, 1e-8),
    (16, 32, 3, 2, 1, False, 1e-8),
    (16, 16, 3, 1, 4, True, 1e-6),    # grouped, bias, timm's default eps
    (8, 12, 1, 2, 1, False, 1e-5),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_std_conv_matches_timm(case):
    *shape, eps = case
    conv = _torch_layer(*shape, eps=eps)
    layer = _keras_layer(conv, eps)
    x = np.random.default_rng(1).standard_normal((2, 13, 10, case[0])).astype(np.float32)
    got, ref = _run(layer, conv, x)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


def test_kernel_is_stored_raw_and_standardised_per_output_filter():
    conv = _torch_layer(16, 32, 3, 1, 1, False, 1e-8)
    layer = _keras_layer(conv, 1e-8)
    assert [v.path.split("/")[-1] for v in layer.weights] == ["kernel"]
    np.testing.assert_array_equal(np.asarray(layer.kernel),
                                  conv.weight.detach().numpy().transpose(2, 3, 1, 0))
    w = np.asarray(layer.standardized_kernel())
    np.testing.assert_allclose(w.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(w.var(axis=(0, 1, 2)), 1, atol=1e-4)


def test_std_conv_gradient_matches_timm():
    """Fine-tuning: the gradient reaches the raw kernel through the standardisation as in torch."""
    conv = _torch_layer(8, 12, 3, 1, 1, False, 1e-8)
    layer = _keras_layer(conv, 1e-8)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 9, 11, 8)).astype(np.float32)
    g = rng.standard_normal((2, 9, 11, 12)).astype(np.float32)
    out = conv(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    (out * torch.from_numpy(g.transpose(0, 3, 1, 2).copy())).sum().backward()
    ref = conv.weight.grad.numpy().transpose(2, 3, 1, 0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * g)
    got = tape.gradient(loss, layer.kernel.value).numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4


def test_std_conv_keras_file_round_trip(tmp_path):
    inp = keras.Input((None, None, 4))
    y = StdConv2D(6, 3, padding="same", eps=1e-8, name="std")(inp)
    model = keras.Model(inp, y)
    model.get_layer("std").kernel.assign(
        np.random.default_rng(3).standard_normal((3, 3, 4, 6)).astype(np.float32))
    x = np.random.default_rng(4).standard_normal((1, 7, 9, 4)).astype(np.float32)
    before = np.asarray(model.predict_on_batch(x))
    path = tmp_path / "std.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    layer = loaded.get_layer("std")
    assert isinstance(layer, StdConv2D) and layer.eps == 1e-8
    np.testing.assert_array_equal(np.asarray(loaded.predict_on_batch(x)), before)


def test_conv_check_refuses_a_plain_conv_or_another_eps_for_std_conv():
    check = TRANSFORMS["conv2d"].check
    torch_conv = StdConv2d(4, 6, 3, eps=1e-8)
    assert check(torch_conv, StdConv2D(6, 3, eps=1e-8), {}) == []
    assert "eps 1e-08 != keras eps 1e-06" in " ".join(check(torch_conv, StdConv2D(6, 3), {}))
    assert "does not" in " ".join(check(torch_conv, keras.layers.Conv2D(6, 3), {}))
    assert check(torch.nn.Conv2d(4, 6, 3), keras.layers.Conv2D(6, 3), {}) == []
