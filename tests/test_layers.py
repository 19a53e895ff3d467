"""PyTorch-semantics layers against torch: TorchMaxPool2D (-inf padding, ceil_mode) and the
builders' conv2d helper (symmetric padding for strided convs), plus the pitfalls they avoid."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import keras
import numpy as np
import pytest
import torch
from torch import nn

from zoo.layers import TorchMaxPool2D
from zoo.models.blocks import conv2d
from zoo.transforms import TRANSFORMS


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _torch_nhwc(module, x):
    with torch.no_grad():
        return module(_nchw(x)).numpy().transpose(0, 2, 3, 1)


def _negative(h, w, c=3, n=2, seed=0):
    """Strictly negative input: a zero pad would win every border window."""
    x = np.random.default_rng(seed).standard_normal((n, h, w, c)).astype(np.float32)
    return -np.abs(x) - 0.5


# ------------------------------------------------------------------------------------- max pooling

POOL_CASES = [  # (kernel, stride, padding, ceil_mode)
    (3, 2, 1, False),   # ResNet stem
    (3, 2, 1, True),
    (3, 2, 0, True),    # GoogLeNet / SqueezeNet
    (2, 2, 0, True),
    (3, 1, 1, False),
    (3, 3, 1, True),    # size 8: the last window would start in the right pad, torch drops it
]
SIZES = [(7, 7), (8, 8), (13, 13), (112, 112), (7, 8), (13, 10)]


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", POOL_CASES)
@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_torch_max_pool_matches_torch(kernel, stride, padding, ceil_mode, hw):
    x = _negative(*hw)
    ref = _torch_nhwc(nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode), x)
    layer = TorchMaxPool2D(kernel, stride, padding=padding, ceil_mode=ceil_mode)
    got = np.asarray(layer(x))
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    assert layer.compute_output_shape((None, *hw, 3)) == (None, *ref.shape[1:3], 3)


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_torch_max_pool_unknown_spatial_size_in_a_model(ceil_mode):
    """Builders use input_shape=(None, None, C): the ceil_mode padding must work in the graph."""
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, TorchMaxPool2D(3, 2, padding=1, ceil_mode=ceil_mode)(inp))
    for hw in [(7, 7), (8, 8), (13, 10)]:
        x = _negative(*hw, n=1)
        ref = _torch_nhwc(nn.MaxPool2d(3, 2, 1, ceil_mode=ceil_mode), x)
        np.testing.assert_array_equal(np.asarray(model.predict_on_batch(x)), ref)


def test_zero_padded_max_pool_is_wrong_on_negative_input():
    """The pitfall: ZeroPadding2D + MaxPooling2D is only torch's MaxPool2d after a ReLU."""
    x = _negative(8, 8)
    ref = _torch_nhwc(nn.MaxPool2d(3, 2, 1), x)
    zero = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.ZeroPadding2D(1),
                             keras.layers.MaxPooling2D(3, 2, padding="valid")])
    wrong = np.asarray(zero(x))
    assert wrong.shape == ref.shape
    assert not np.allclose(wrong, ref)
    assert (wrong[:, 0, :, :] == 0).all()      # the pad value leaks into the border windows
    np.testing.assert_array_equal(np.asarray(TorchMaxPool2D(3, 2, padding=1)(x)), ref)


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_torch_max_pool_keras_file_round_trip(tmp_path, ceil_mode):
    inp = keras.Input((None, None, 3))
    y = TorchMaxPool2D(3, 2, padding=1, ceil_mode=ceil_mode, name="pool")(inp)
    model = keras.Model(inp, keras.layers.Conv2D(4, 1, name="proj")(y))
    x = _negative(13, 8, n=1)
    before = np.asarray(model.predict_on_batch(x))
    path = tmp_path / "pool.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    pool = loaded.get_layer("pool")
    assert isinstance(pool, TorchMaxPool2D)
    assert (pool.pool_size, pool.strides, pool.padding, pool.ceil_mode) == ((3, 3), (2, 2), (1, 1),
                                                                             ceil_mode)
    np.testing.assert_array_equal(np.asarray(loaded.predict_on_batch(x)), before)


# ---------------------------------------------------------------------------------------- conv2d

def _load_conv(tconv, layer):
    t = TRANSFORMS["conv2d"]
    kvars = {v.path.rsplit("/", 1)[-1]: v for v in layer.weights}
    for leaf, tensor in tconv.state_dict().items():
        kname, fn = t.leaf(leaf)
        kvars[kname].assign(fn(tensor.numpy(), target_shape=tuple(kvars[kname].shape)))


def _torch_conv(k, s, d=1, c_in=3, c_out=6, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, k, stride=s, padding=d * (k - 1) // 2, dilation=d,
                     bias=False).eval()


def _rel(got, ref):
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("kernel, stride, dilation", [(3, 2, 1), (7, 2, 1), (1, 2, 1), (3, 1, 1),
                                                      (3, 1, 2)])
@pytest.mark.parametrize("hw", [(8, 8), (9, 9), (8, 9)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_common_conv2d_matches_torch_padding(kernel, stride, dilation, hw):
    tconv = _torch_conv(kernel, stride, dilation)
    inp = keras.Input((*hw, 3))
    model = keras.Model(inp, conv2d(inp, 6, kernel, stride=stride, dilation=dilation, name="c"))
    _load_conv(tconv, model.get_layer("c"))
    x = np.random.default_rng(1).standard_normal((2, *hw, 3)).astype(np.float32)
    assert _rel(np.asarray(model(x)), _torch_nhwc(tconv, x)) <= 1e-5


def test_keras_same_padding_with_stride_2_on_even_input_is_wrong():
    """The pitfall: "same" pads (0, 1) for k=3, s=2 on an even input; torch pads (1, 1)."""
    tconv = _torch_conv(3, 2)
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 3)).astype(np.float32)
    same = keras.layers.Conv2D(6, 3, strides=2, padding="same", use_bias=False)
    same.build((None, 8, 8, 3))
    _load_conv(tconv, same)
    assert _rel(np.asarray(same(x)), _torch_nhwc(tconv, x)) > 0.1
    # on an odd input "same" happens to pad symmetrically, which is why the bug hides
    x9 = np.random.default_rng(1).standard_normal((2, 9, 9, 3)).astype(np.float32)
    assert _rel(np.asarray(same(x9)), _torch_nhwc(tconv, x9)) <= 1e-5
