"""zoo.layers.AdaptiveAvgPool2D against torch's nn.AdaptiveAvgPool2d (VGG 7x7, AlexNet 6x6)."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import keras
import numpy as np
import pytest
import torch
from torch import nn

from zoo.layers.adaptive_pooling import AdaptiveAvgPool2D


def _torch_nhwc(module, x):
    with torch.no_grad():
        out = module(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    return out.numpy().transpose(0, 2, 3, 1)


def _x(h, w, c=4, n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, h, w, c)).astype(np.float32)


# Sizes that are not multiples of the output (overlapping bins), smaller than it (repeated
# pixels), equal to it (identity), multiples (plain pooling) and non-square.
SIZES = [(1, 1), (3, 3), (7, 7), (14, 14), (10, 13), (13, 10), (6, 17), (97, 113), (224, 5)]


@pytest.mark.parametrize("output_size", [7, (6, 6), (1, 1), (5, 3)], ids=str)
@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_adaptive_avg_pool_matches_torch(output_size, hw):
    x = _x(*hw)
    ref = _torch_nhwc(nn.AdaptiveAvgPool2d(output_size), x)
    layer = AdaptiveAvgPool2D(output_size)
    got = np.asarray(layer(x))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    assert layer.compute_output_shape((None, *hw, 4)) == (None, *ref.shape[1:3], 4)


def test_adaptive_avg_pool_unknown_spatial_size_in_a_model():
    """Builders use input_shape=(None, None, C): the bins must come from the runtime size."""
    inp = keras.Input((None, None, 4))
    model = keras.Model(inp, AdaptiveAvgPool2D(7)(inp))
    for hw in [(3, 3), (7, 7), (9, 11), (16, 5)]:
        x = _x(*hw, n=1)
        np.testing.assert_allclose(np.asarray(model.predict_on_batch(x)),
                                   _torch_nhwc(nn.AdaptiveAvgPool2d(7), x), rtol=0, atol=1e-6)


def test_adaptive_avg_pool_is_exactly_the_identity_at_its_output_size():
    x = _x(7, 7)
    np.testing.assert_array_equal(np.asarray(AdaptiveAvgPool2D(7)(x)), x)


def test_resizing_is_not_adaptive_pooling():
    """The pitfall: upsampling 3x3 VGG features to 7x7 (or shrinking 10x13) with a resize is not
    torch's bin average; an adaptive pool is needed at every size but the trained one."""
    for hw in [(3, 3), (10, 13)]:
        x = _x(*hw)
        ref = _torch_nhwc(nn.AdaptiveAvgPool2d(7), x)
        for method in ("bilinear", "nearest"):
            resized = np.asarray(keras.layers.Resizing(7, 7, interpolation=method)(x))
            assert np.abs(resized - ref).max() > 1e-2, (hw, method)
        assert np.abs(np.asarray(AdaptiveAvgPool2D(7)(x)) - ref).max() < 1e-6


def test_adaptive_avg_pool_keras_file_round_trip(tmp_path):
    inp = keras.Input((None, None, 4))
    y = AdaptiveAvgPool2D((5, 3), name="pool")(inp)
    model = keras.Model(inp, keras.layers.Conv2D(2, 1, name="proj")(y))
    x = _x(9, 11, n=1)
    before = np.asarray(model.predict_on_batch(x))
    path = tmp_path / "pool.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    pool = loaded.get_layer("pool")
    assert isinstance(pool, AdaptiveAvgPool2D)
    assert pool.output_size == (5, 3)
    np.testing.assert_array_equal(np.asarray(loaded.predict_on_batch(x)), before)
