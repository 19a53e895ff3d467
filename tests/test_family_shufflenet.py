"""ShuffleNetV2 (torchvision): its NHWC channel split / channel shuffle layers and their pitfalls.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import keras
import numpy as np
import pytest
import torch
from keras import ops
from torchvision.models.shufflenetv2 import channel_shuffle

from helpers import pipeline_parity
from zoo.layers.shuffle import ChannelShuffle, ChannelSplit

NAME = "torchvision/shufflenet_v2_x1_0"


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.numpy().transpose(0, 2, 3, 1)


def _naive_shuffle(x, groups):
    """torchvision's NCHW code ported literally to an NHWC tensor (the pitfall)."""
    n, h, w, c = x.shape
    y = ops.reshape(x, (n, groups, c // groups, h, w))
    y = ops.transpose(y, (0, 2, 1, 3, 4))
    return ops.reshape(y, (n, h, w, c))


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------------ the layers

@pytest.mark.parametrize("groups", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(2, 5, 7, 12), (1, 1, 1, 24), (3, 4, 3, 48)])
def test_channel_shuffle_matches_torch(groups, shape):
    x = _x(shape)
    ref = _nhwc(channel_shuffle(_nchw(x), groups))
    np.testing.assert_array_equal(np.asarray(ChannelShuffle(groups)(x)), ref)


def test_channel_shuffle_in_a_model_with_unknown_spatial_size():
    inp = keras.Input((None, None, 8))
    model = keras.Model(inp, ChannelShuffle(2)(inp))
    for hw in [(3, 5), (6, 1)]:
        x = _x((2, *hw, 8))
        np.testing.assert_array_equal(model.predict_on_batch(x), _nhwc(channel_shuffle(_nchw(x), 2)))


def test_channel_split_matches_torch_chunk():
    x = _x((2, 3, 5, 10))
    ref = [_nhwc(t) for t in _nchw(x).chunk(2, dim=1)]
    got = ChannelSplit(2)(x)
    assert len(got) == 2
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(np.asarray(g), r)
    assert ChannelSplit(2).compute_output_shape((None, None, None, 10)) == [(None, None, None, 5)] * 2


def test_layers_reject_channel_counts_they_cannot_divide():
    with pytest.raises(ValueError, match="cannot be shuffled"):
        ChannelShuffle(3)(_x((1, 2, 2, 8)))
    with pytest.raises(ValueError, match="equal parts"):
        ChannelSplit(2)(_x((1, 2, 2, 7)))


def test_split_and_shuffle_survive_a_keras_round_trip(tmp_path):
    inp = keras.Input((None, None, 12))
    a, b = ChannelSplit(2, name="split")(inp)
    y = keras.layers.Concatenate()([a, keras.layers.Conv2D(6, 1, name="conv")(b)])
    model = keras.Model(inp, ChannelShuffle(3, name="shuffle")(y))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.get_layer("shuffle").get_config()["groups"] == 3
    assert loaded.get_layer("split").get_config()["sections"] == 2
    x = _x((2, 5, 6, 12))
    np.testing.assert_array_equal(loaded.predict_on_batch(x), model.predict_on_batch(x))


def test_pitfall_nchw_shuffle_code_ported_literally_to_nhwc_is_wrong():
    x = _x((2, 5, 7, 12))
    ref = _nhwc(channel_shuffle(_nchw(x), 2))
    naive = np.asarray(_naive_shuffle(x, 2))
    assert naive.shape == ref.shape
    assert np.abs(naive - ref).max() > 1.0          # rows and columns mixed into channels
    np.testing.assert_array_equal(np.asarray(ChannelShuffle(2)(x)), ref)


# -------------------------------------------------------------------------------- the network

def test_pitfall_literal_nchw_shuffle_in_the_network_fails_validation(monkeypatch):
    monkeypatch.setattr(ChannelShuffle, "call", lambda self, x: _naive_shuffle(x, self.groups))
    p = pipeline_parity(NAME)
    assert not p["passed"]
    assert p["features"]["stage2"]["max_rel"] > 1e-1, p["features"]["stage2"]["max_rel"]


def test_pitfall_shuffle_groups_must_not_be_skipped(monkeypatch):
    """Concatenating without the shuffle gives the right shapes and the wrong numbers."""
    monkeypatch.setattr(ChannelShuffle, "call", lambda self, x: x)
    p = pipeline_parity(NAME)
    assert not p["passed"] and p["max_rel"] > 1e-1, p["max_rel"]
