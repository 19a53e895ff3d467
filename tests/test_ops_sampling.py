"""zoo.ops.sampling against F.interpolate and F.grid_sample over their settings: every mode and
align_corners, antialias, non-square sizes, up- and downscaling, scale factors whose inverse is
not in/out, and grids reaching outside the input."""
import zoo.conversion.torch_first  # noqa: F401  (torch before tensorflow)

# isort: split

import numpy as np
import pytest
import tensorflow as tf
import torch
import torch.nn.functional as F

from zoo.ops.sampling import grid_sample, interpolate

TOL = 2e-5   # float32 rounding (the weights are summed in another order than torch's)


def _x(h=7, w=10, c=3, b=2, seed=0):
    return np.random.default_rng(seed).standard_normal((b, h, w, c)).astype(np.float32)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.numpy().transpose(0, 2, 3, 1)


SIZES = [(14, 20), (5, 4), (7, 23), (3, 10), (1, 1)]   # up, down, mixed, from (7, 10)
MODES = [("nearest", False, False), ("bilinear", False, False), ("bilinear", True, False),
         ("bicubic", False, False), ("bicubic", True, False), ("bilinear", False, True),
         ("bicubic", False, True), ("bilinear", True, True), ("bicubic", True, True)]


def _assert_interpolate_is_torchs(mode, align_corners, antialias, **target):
    """interpolate(x, size= or scale_factor=) against F.interpolate on the same 7 x 10 input."""
    x = _x()
    kw = {} if mode == "nearest" else {"align_corners": align_corners, "antialias": antialias}
    want = _nhwc(F.interpolate(_nchw(x), mode=mode, **target, **kw))
    got = interpolate(x, mode=mode, **target, **kw).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("mode,align_corners,antialias", MODES)
@pytest.mark.parametrize("size", SIZES)
def test_interpolate_to_a_size(mode, align_corners, antialias, size):
    _assert_interpolate_is_torchs(mode, align_corners, antialias, size=size)


@pytest.mark.parametrize("mode,align_corners,antialias", MODES)
@pytest.mark.parametrize("factor", [2.0, 0.5, 0.7, (1.5, 0.35)])
def test_interpolate_by_a_scale_factor(mode, align_corners, antialias, factor):
    # 0.7 on 7 x 10 px: 1/0.7 != 7/4 and 10/7: torch places the samples by 1/scale_factor
    _assert_interpolate_is_torchs(mode, align_corners, antialias, scale_factor=factor)


def test_tf_image_resize_bicubic_is_not_torchs():
    # why bicubic without antialias is not tf.image.resize: A = -0.5 and border renormalisation
    x = _x()
    for size in ((14, 20), (5, 4)):
        want = _nhwc(F.interpolate(_nchw(x), size=size, mode="bicubic"))
        assert np.abs(tf.image.resize(x, size, method="bicubic").numpy() - want).max() > 5e-2
        np.testing.assert_allclose(interpolate(x, size, mode="bicubic").numpy(), want, atol=TOL,
                                   rtol=0)


@pytest.mark.parametrize("mode,antialias", [("bilinear", False), ("nearest", False),
                                            ("bicubic", True)])
def test_interpolate_with_free_spatial_sizes_in_a_tf_function(mode, antialias):
    kw = {"antialias": True} if antialias else {}
    f = tf.function(lambda t: interpolate(t, size=(9, 13), mode=mode, **kw),
                    input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    for h, w in ((7, 10), (20, 5)):
        x = _x(h, w)
        want = _nhwc(F.interpolate(_nchw(x), size=(9, 13), mode=mode, **kw))
        np.testing.assert_allclose(f(x).numpy(), want, atol=TOL, rtol=0)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample(mode, padding_mode, align_corners):
    x = _x(6, 9)
    rng = np.random.default_rng(1)
    grid = rng.uniform(-1.3, 1.3, (2, 5, 11, 2)).astype(np.float32)   # partly outside
    # exact pixel centres and half-way points: nearest's rounding of .5 (to even, as torch)
    grid[0, 0, :9, 0] = (np.arange(9) * 2 + 1) / 9 - 1
    grid[0, 1, :9, 0] = np.arange(9) * 2 / 9 - 1
    grid[0, 2, :9, 0] = np.linspace(-1, 1, 9)
    want = _nhwc(F.grid_sample(_nchw(x), torch.from_numpy(grid), mode=mode,
                               padding_mode=padding_mode, align_corners=align_corners))
    got = grid_sample(x, grid, mode, padding_mode, align_corners).numpy()
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_grid_sample_in_a_tf_function_with_free_sizes():
    f = tf.function(lambda a, g: grid_sample(a, g, align_corners=False),
                    input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32),
                                     tf.TensorSpec([None, None, None, 2], tf.float32)])
    x, grid = _x(5, 8, 4, 1), np.random.default_rng(2).uniform(-1, 1, (1, 3, 4, 2))
    grid = grid.astype(np.float32)
    want = _nhwc(F.grid_sample(_nchw(x), torch.from_numpy(grid), align_corners=False))
    np.testing.assert_allclose(f(x, grid).numpy(), want, atol=TOL, rtol=0)
