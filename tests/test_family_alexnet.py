"""AlexNet (recipes/alexnet.yaml, zoo/models/alexnet.py:alexnet): parity at 64x64 (features 1x1,
replicated to 6x6 by the adaptive pool), an odd non-square size where the adaptive pool's bins
overlap, the flatten-order and stem-padding pitfalls, and multi-scale features."""
import os

import numpy as np
import pytest
import torch
import yaml

import zoo
from helpers import ROOT, SMALL
from zoo.catalog import get_variant
from zoo.conversion.sources import load_torch_model

TOL = 1e-4
NAME = "torchvision/alexnet"


@pytest.fixture(scope="module")
def converted():
    return zoo.convert(NAME, input_size=SMALL)


@pytest.fixture(scope="module")
def torch_module():
    variant, tag = get_variant(NAME)
    return load_torch_model(variant, tag, "random").module   # same seed: same perturbed weights


def _torch_nhwc(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def _rel(got, ref):
    return float(np.abs(np.asarray(got) - ref).max() / np.abs(ref).max())


def test_parity_small(converted):
    _model, report = converted
    parity = report["parity"]["in_memory"]
    assert parity["max_rel"] < TOL, parity
    assert set(parity["features"]) == {"stage1", "stage2", "stage3"}
    assert parity["logits"]["top1"] == 1.0


def test_odd_non_square_size_through_the_adaptive_pool(converted, torch_module):
    """151 x 173 -> 3 x 4 features, whose 6 x 6 adaptive bins overlap; an odd size also tests
    the symmetric padding of the 11x11/4 stem."""
    import keras

    model, _ = converted
    x = np.random.default_rng(3).standard_normal((2, 151, 173, 3)).astype(np.float32)
    probe = keras.Model(model.inputs, model.get_layer("stage3").output)
    assert probe.predict_on_batch(x[:1]).shape == (1, 3, 4, 256)
    ref = _torch_nhwc(torch_module, x)
    got = model.predict_on_batch(x)
    assert _rel(got, ref) < TOL
    assert (np.asarray(got).argmax(1) == ref.argmax(1)).all()


def test_pitfall_linear_after_flatten(tmp_path, monkeypatch):
    """classifier.1 mapped with plain `linear` (same shapes): the stages match, the logits do
    not, because torch flattens (C, H, W) and Keras (H, W, C)."""
    data = yaml.safe_load((ROOT / "recipes" / "alexnet.yaml").read_text())
    for rule in data["mapping"]:
        if rule["torch"] == r"classifier\.1":
            assert rule["transform"] == "linear_after_flatten"
            rule["transform"] = "linear"
            rule.pop("args")
    data["variants"] = {"test/alexnet_plain_linear": data["variants"][NAME]}
    (tmp_path / "alexnet_plain_linear.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("ZOO_RECIPE_PATH",
                       os.pathsep.join([str(tmp_path), os.environ.get("ZOO_RECIPE_PATH", "")]))
    with pytest.raises(zoo.ValidationError) as e:
        zoo.convert("test/alexnet_plain_linear", input_size=SMALL)
    parity = e.value.report["parity"]["in_memory"]
    assert parity["logits"]["max_rel"] > 1e-1
    assert all(f["max_rel"] < TOL for f in parity["features"].values())


def test_pitfall_stem_needs_symmetric_padding(converted, torch_module):
    """Keras "same" for the 11x11/4 stem pads (k - s) = 7 pixels, torch pads 2 + 2: the output
    is shifted and even has another size (16 vs 15 at 64 px)."""
    import keras

    model, _ = converted
    inp = keras.Input((None, None, 3))
    same = keras.layers.Conv2D(64, 11, strides=4, padding="same")
    out = same(inp)
    same.set_weights(model.get_layer("conv0").get_weights())
    x = np.random.default_rng(4).standard_normal((1, SMALL, SMALL, 3)).astype(np.float32)
    with torch.no_grad():
        ref = torch_module.features[0](torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    ref = ref.numpy().transpose(0, 2, 3, 1)
    wrong = keras.Model(inp, out).predict_on_batch(x)
    assert ref.shape[1:3] == (15, 15) and wrong.shape[1:3] == (16, 16)
    assert _rel(wrong[:, 1:, 1:], ref) > 1e-2 and _rel(wrong[:, :15, :15], ref) > 1e-2
    probe = keras.Model(model.inputs, model.get_layer("conv0").output)
    assert _rel(probe.predict_on_batch(x), ref) < TOL


def test_features_only_and_headless(converted):
    import keras

    from zoo.models.alexnet import alexnet

    full, _ = converted
    feats = alexnet(features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [64, 192, 256]
    for layer in feats.layers:
        layer.set_weights(full.get_layer(layer.name).get_weights())
    x = np.random.default_rng(5).standard_normal((1, 127, 127, 3)).astype(np.float32)
    outs = feats.predict_on_batch(x)
    assert [o.shape[1] for o in outs] == [15, 7, 3]   # strides 8, 16, 32
    probe = keras.Model(full.inputs, [full.get_layer(f"stage{i}").output for i in (1, 2, 3)])
    for got, want in zip(outs, probe.predict_on_batch(x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert alexnet(include_top=False, pooling="max").output.shape == (None, 256)
