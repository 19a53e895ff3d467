"""zoo.ops.deform_conv2d and the DeformConv2D layer against torchvision.ops.deform_conv2d /
DeformConv2d (the compiled CPU kernel): DCN v1 and v2, offset groups, conv groups, stride,
padding, dilation, offsets far outside the input, weights mapped by the `conv2d` transform, the
.keras round trip."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision before keras)

# isort: split

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
import torchvision

from zoo.layers.deform_conv import DeformConv2D
from zoo.ops.deform_conv import deform_conv2d
from zoo.transforms import TRANSFORMS

TOL = 2e-5


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _out(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


# (cin, cout, k, stride, pad, dilation, groups, offset_groups, masked, offset scale)
CASES = [
    (4, 6, 3, 1, 1, 1, 1, 1, False, 1.0),    # DCN v1
    (4, 6, 3, 1, 1, 1, 1, 1, True, 1.0),     # v2
    (4, 6, 3, 2, 1, 1, 2, 2, True, 2.0),     # strided, grouped, two offset groups
    (6, 4, (3, 2), (1, 2), (2, 0), (2, 1), 1, 3, True, 1.5),   # non-square everything
    (4, 4, 3, 1, 0, 1, 4, 1, False, 8.0),    # depthwise-like; offsets mostly outside the input
    (2, 3, 1, 1, 0, 1, 1, 2, True, 0.7),     # 1x1
]


@pytest.mark.parametrize("case", CASES)
def test_deform_conv2d_matches_torchvision(case):
    cin, cout, k, stride, pad, dil, groups, og, masked, spread = case
    kh, kw = (k, k) if isinstance(k, int) else k
    (sh, sw), (ph, pw), (dh, dw) = (s if isinstance(s, tuple) else (s, s) for s in (stride, pad, dil))
    rng = np.random.default_rng(len(str(case)))
    b, h, w = 2, 7, 9
    ho, wo = _out(h, kh, sh, ph, dh), _out(w, kw, sw, pw, dw)
    x = rng.standard_normal((b, h, w, cin)).astype(np.float32)
    offset = (spread * rng.standard_normal((b, ho, wo, 2 * og * kh * kw))).astype(np.float32)
    mask = rng.uniform(0, 1, (b, ho, wo, og * kh * kw)).astype(np.float32) if masked else None
    weight = rng.standard_normal((cout, cin // groups, kh, kw)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    want = torchvision.ops.deform_conv2d(
        _nchw(x), _nchw(offset), torch.from_numpy(weight), torch.from_numpy(bias),
        (sh, sw), (ph, pw), (dh, dw), None if mask is None else _nchw(mask))
    kernel = weight.transpose(2, 3, 1, 0)
    got = deform_conv2d(x, offset, kernel, bias, (sh, sw), (ph, pw), (dh, dw), mask, groups)
    np.testing.assert_allclose(got.numpy(), _nhwc(want), atol=TOL, rtol=0)


def test_layer_takes_torchvisions_weights_and_round_trips(tmp_path):
    torch.manual_seed(0)
    module = torchvision.ops.DeformConv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    torch.nn.init.normal_(module.bias)
    b, h, w = 1, 9, 8
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    rng = np.random.default_rng(9)
    x = rng.standard_normal((b, h, w, 4)).astype(np.float32)
    offset = (2 * rng.standard_normal((b, ho, wo, 2 * 2 * 9))).astype(np.float32)
    mask = rng.uniform(0, 1, (b, ho, wo, 2 * 9)).astype(np.float32)
    with torch.no_grad():
        want = _nhwc(module(_nchw(x), _nchw(offset), _nchw(mask)))

    inputs = [keras.Input((h, w, 4)), keras.Input((None, None, 36)), keras.Input((None, None, 18))]
    layer = DeformConv2D(6, 3, strides=2, padding=1, groups=2, name="dcn")
    model = keras.Model(inputs, layer(inputs))
    conv2d = TRANSFORMS["conv2d"]
    assert conv2d.check(module, layer, {}) == []   # stride, dilation and groups agree
    for leaf, tensor in module.named_parameters():
        var_name, fn = conv2d.leaf(leaf)
        var = getattr(layer, var_name)
        var.assign(fn(tensor.detach().numpy(), target_shape=tuple(var.shape)))
    np.testing.assert_allclose(model([x, offset, mask]).numpy(), want, atol=TOL, rtol=0)

    path = tmp_path / "dcn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded([x, offset, mask]).numpy(), want, atol=TOL, rtol=0)


def test_in_a_tf_function_with_free_spatial_sizes():
    rng = np.random.default_rng(4)
    kernel = rng.standard_normal((3, 3, 2, 3)).astype(np.float32)
    f = tf.function(lambda a, o: deform_conv2d(a, o, kernel, padding=1),
                    input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32),
                                     tf.TensorSpec([None, None, None, 18], tf.float32)])
    for h, w in ((5, 6), (8, 3)):
        x = rng.standard_normal((1, h, w, 2)).astype(np.float32)
        offset = rng.standard_normal((1, h, w, 18)).astype(np.float32)
        want = torchvision.ops.deform_conv2d(_nchw(x), _nchw(offset),
                                             torch.from_numpy(kernel.transpose(3, 2, 0, 1)),
                                             padding=1)
        np.testing.assert_allclose(f(x, offset).numpy(), _nhwc(want), atol=TOL, rtol=0)
