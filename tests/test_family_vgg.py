"""VGG family (recipes/vgg.yaml, zoo/models/vgg.py:vgg): parity of VGG-11 (the smallest; every
VGG is ~130M parameters, so only this one is converted here, at 32x32 where the features are
1x1 and the adaptive pool replicates them to 7x7), an odd non-square size where the adaptive
pool's bins overlap, the flatten-order pitfall and multi-scale features."""
import os

import numpy as np
import pytest
import torch
import yaml

import zoo
from helpers import ROOT
from zoo.catalog import get_variant
from zoo.conversion.sources import load_torch_model

TOL = 1e-4
NAME = "torchvision/vgg11"
SIZE = 32   # torchvision's minimum for VGG


@pytest.fixture(scope="module")
def converted():
    return zoo.convert(NAME, input_size=SIZE)


def _torch_nhwc(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def _rel(got, ref):
    return float(np.abs(np.asarray(got) - ref).max() / np.abs(ref).max())


def test_parity_small(converted):
    _model, report = converted
    parity = report["parity"]["in_memory"]
    assert parity["max_rel"] < TOL, parity
    assert set(parity["features"]) == {f"stage{i}" for i in range(1, 6)}
    assert parity["logits"]["top1"] == 1.0


def test_odd_non_square_size_through_the_adaptive_pool(converted):
    """97 x 113 -> 3 x 3 features: AdaptiveAvgPool2d((7, 7)) has overlapping bins there, which
    torch accepts; the Keras model must give the same logits (the same perturbed weights are
    rebuilt from the fixed seed)."""
    import keras

    model, _ = converted
    probe = keras.Model(model.inputs, model.get_layer("stage5").output)
    x = np.random.default_rng(3).standard_normal((2, 97, 113, 3)).astype(np.float32)
    assert probe.predict_on_batch(x[:1]).shape == (1, 3, 3, 512)
    variant, tag = get_variant(NAME)
    module = load_torch_model(variant, tag, "random").module
    ref = _torch_nhwc(module, x)
    got = model.predict_on_batch(x)
    assert _rel(got, ref) < TOL
    assert (np.asarray(got).argmax(1) == ref.argmax(1)).all()


def test_pitfall_linear_after_flatten(tmp_path, monkeypatch):
    """A copy of the recipe that maps classifier.0 with plain `linear`: the shapes fit (25088 x
    4096 either way), so only the numbers can tell. torch flattens (C, H, W), Keras (H, W, C):
    every stage matches and the logits are wrong. Even at 32x32, where the 7x7 grid holds one
    value per channel, the rows pair features with the wrong weights."""
    data = yaml.safe_load((ROOT / "recipes" / "vgg.yaml").read_text())
    for rule in data["mapping"]:
        if rule["torch"] == r"classifier\.0":
            assert rule["transform"] == "linear_after_flatten"
            rule["transform"] = "linear"
            rule.pop("args")
    data["variants"] = {"test/vgg11_plain_linear": data["variants"][NAME]}
    (tmp_path / "vgg_plain_linear.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("ZOO_RECIPE_PATH",
                       os.pathsep.join([str(tmp_path), os.environ.get("ZOO_RECIPE_PATH", "")]))
    with pytest.raises(zoo.ValidationError) as e:
        zoo.convert("test/vgg11_plain_linear", input_size=SIZE)
    parity = e.value.report["parity"]["in_memory"]
    assert parity["logits"]["max_rel"] > 1e-1
    assert all(f["max_rel"] < TOL for f in parity["features"].values())


def test_features_only_and_headless(converted):
    from zoo.models.vgg import vgg

    full, _ = converted
    depths = get_variant(NAME)[0].builder_kwargs["depths"]
    feats = vgg(depths, features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [64, 128, 256, 512, 512]
    assert not any(layer.name.startswith(("fc", "predictions")) for layer in feats.layers)
    for layer in feats.layers:
        layer.set_weights(full.get_layer(layer.name).get_weights())
    x = np.random.default_rng(5).standard_normal((1, 64, 64, 3)).astype(np.float32)
    outs = feats.predict_on_batch(x)
    assert [o.shape[1] for o in outs] == [32, 16, 8, 4, 2]   # strides 2 ... 32
    import keras
    probe = keras.Model(full.inputs, [full.get_layer(f"stage{i}").output for i in range(1, 6)])
    for got, want in zip(outs, probe.predict_on_batch(x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert vgg(depths, include_top=False, pooling="avg").output.shape == (None, 512)
    assert vgg(depths, include_top=False).output.shape == (None, None, None, 512)
