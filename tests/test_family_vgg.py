"""VGG family (recipes/vgg.yaml, zoo/models/vgg.py:vgg): parity of VGG-11 (the smallest; every
VGG is ~130M parameters, so only this one is converted here, at 32x32 where the features are
1x1 and the adaptive pool replicates them to 7x7), an odd non-square size where the adaptive
pool's bins overlap, the flatten-order pitfall and multi-scale features."""
import numpy as np
import pytest

import zoo
from helpers import (
    assert_features_match,
    assert_small_parity,
    plain_linear,
    random_input,
    recipe_copy,
    rel,
    torch_nhwc,
)
from zoo.catalog import get_variant

TOL = 1e-4
NAME = "torchvision/vgg11"
SIZE = 32   # torchvision's minimum for VGG


def test_parity_small(converted_small):
    assert_small_parity(converted_small(NAME, SIZE)[1], 5, TOL)


def test_odd_non_square_size_through_the_adaptive_pool(converted_small, torch_model):
    """97 x 113 -> 3 x 3 features: AdaptiveAvgPool2d((7, 7)) has overlapping bins there, which
    torch accepts; the Keras model must give the same logits (the same perturbed weights are
    rebuilt from the fixed seed)."""
    import keras

    model, _ = converted_small(NAME, SIZE)
    probe = keras.Model(model.inputs, model.get_layer("stage5").output)
    x = random_input(97, 113, seed=3)
    assert probe.predict_on_batch(x[:1]).shape == (1, 3, 3, 512)
    ref = torch_nhwc(torch_model(NAME), x)
    got = model.predict_on_batch(x)
    assert rel(got, ref) < TOL
    assert (np.asarray(got).argmax(1) == ref.argmax(1)).all()


def test_pitfall_linear_after_flatten(tmp_path, monkeypatch):
    """A copy of the recipe that maps classifier.0 with plain `linear`: the shapes fit (25088 x
    4096 either way), so only the numbers can tell. torch flattens (C, H, W), Keras (H, W, C):
    every stage matches and the logits are wrong. Even at 32x32, where the 7x7 grid holds one
    value per channel, the rows pair features with the wrong weights."""
    recipe_copy(tmp_path, monkeypatch, "vgg", NAME, "test/vgg11_plain_linear",
                plain_linear(r"classifier\.0"))
    with pytest.raises(zoo.ValidationError) as e:
        zoo.convert("test/vgg11_plain_linear", input_size=SIZE)
    parity = e.value.report["parity"]["in_memory"]
    assert parity["logits"]["max_rel"] > 1e-1
    assert all(f["max_rel"] < TOL for f in parity["features"].values())


def test_features_only_and_headless(converted_small):
    from zoo.models.vgg import vgg

    full, _ = converted_small(NAME, SIZE)
    depths = get_variant(NAME)[0].builder_kwargs["depths"]
    feats = vgg(depths, features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [64, 128, 256, 512, 512]
    assert not any(layer.name.startswith(("fc", "predictions")) for layer in feats.layers)
    outs = assert_features_match(feats, full, random_input(64, 64, n=1, seed=5), 5)
    assert [o.shape[1] for o in outs] == [32, 16, 8, 4, 2]   # strides 2 ... 32
    assert vgg(depths, include_top=False, pooling="avg").output.shape == (None, 512)
    assert vgg(depths, include_top=False).output.shape == (None, None, None, 512)
