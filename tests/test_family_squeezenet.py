"""SqueezeNet 1.0 / 1.1 (recipes/squeezenet.yaml, zoo/models/squeezenet.py:squeezenet): parity
of both versions, odd non-square sizes, the ceil_mode and Fire concat-order pitfalls, and
multi-scale features."""
import numpy as np
import pytest
import torch

import zoo
import zoo.models.squeezenet as squeezenet_module
from helpers import SMALL, parity_at
from zoo.catalog import get_variant
from zoo.conversion.sources import load_torch_model

TOL = 1e-4
NAMES = ["torchvision/squeezenet1_0", "torchvision/squeezenet1_1"]


@pytest.fixture(scope="module")
def converted():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = zoo.convert(name, input_size=SMALL)
        return cache[name]

    return get


def _torch_nhwc(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def _rel(got, ref):
    return float(np.abs(np.asarray(got) - ref).max() / np.abs(ref).max())


def _mapped(name, **builder_overrides):
    """(perturbed torch module, Keras model built with the recipe's kwargs + overrides, mapped)."""
    from zoo.conversion.mapping import apply_plan, plan_mapping
    from zoo.models import get_builder

    variant, tag = get_variant(name)
    tm = load_torch_model(variant, tag, "random")
    model = get_builder(variant.builder)(**{**variant.builder_kwargs, **builder_overrides})
    plan = plan_mapping(tm.state_dict_numpy(), model, variant.rules, variant.recipe.ignore,
                        modules=dict(tm.module.named_modules()), context=name)
    apply_plan(model, plan)
    return tm.module, model


@pytest.mark.parametrize("name", NAMES)
def test_parity_small(name, converted):
    _model, report = converted(name)
    parity = report["parity"]["in_memory"]
    assert parity["max_rel"] < TOL, parity
    assert set(parity["features"]) == {f"stage{i}" for i in range(1, 5)}
    assert parity["logits"]["top1"] == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_odd_non_square_size(name):
    # 67 x 81: the ceil-mode pools see both odd and even sizes (partial last windows).
    err = parity_at(name, 67, 81, input_size=SMALL)
    assert err < TOL, err


# ------------------------------------------------------------------ pitfalls

def test_pitfall_max_pool_needs_ceil_mode():
    """torchvision pools with MaxPool2d(3, 2, ceil_mode=True). Built with floor pooling the model
    is wrong wherever a pool sees an even size, and right only where every pool sees an odd one
    (63 -> 31 -> 15 -> 7 -> 3 in 1.1), so tests must use such sizes."""
    module, wrong = _mapped("torchvision/squeezenet1_1", ceil_mode=False)
    rng = np.random.default_rng(0)
    for h, w in [(65, 65), (67, 81)]:   # 65 -> 32: even at the first pool
        x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
        assert _rel(wrong.predict_on_batch(x), _torch_nhwc(module, x)) > 1e-2, (h, w)
    odd = rng.standard_normal((2, 63, 63, 3)).astype(np.float32)
    assert _rel(wrong.predict_on_batch(odd), _torch_nhwc(module, odd)) < TOL


def test_pitfall_fire_concat_order(monkeypatch):
    """torch.cat([expand1x1, expand3x3], 1): with the branches concatenated the other way round
    every shape still fits (both have `expand` channels) and the mapping is accepted, but the
    next layer pairs its weights with the wrong channels."""
    import keras

    def swapped_fire(x, squeeze, expand, name):
        s = keras.layers.ReLU()(keras.layers.Conv2D(squeeze, 1, name=f"{name}_squeeze")(x))
        e1 = keras.layers.ReLU()(keras.layers.Conv2D(expand, 1, name=f"{name}_expand1x1")(s))
        e3 = keras.layers.ReLU()(keras.layers.Conv2D(expand, 3, padding="same",
                                                     name=f"{name}_expand3x3")(s))
        return keras.layers.Concatenate(axis=-1)([e3, e1])

    monkeypatch.setattr(squeezenet_module, "fire", swapped_fire)
    module, wrong = _mapped("torchvision/squeezenet1_1")
    x = np.random.default_rng(1).standard_normal((2, SMALL, SMALL, 3)).astype(np.float32)
    assert _rel(wrong.predict_on_batch(x), _torch_nhwc(module, x)) > 1e-2


def test_features_only_and_headless(converted):
    import keras

    from zoo.models.squeezenet import squeezenet

    name = "torchvision/squeezenet1_0"
    full, _ = converted(name)
    feats = squeezenet("1_0", features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [96, 256, 512, 512]
    for layer in feats.layers:
        layer.set_weights(full.get_layer(layer.name).get_weights())
    x = np.random.default_rng(5).standard_normal((1, SMALL, SMALL, 3)).astype(np.float32)
    outs = feats.predict_on_batch(x)
    assert [o.shape[1] for o in outs] == [29, 14, 7, 3]   # strides 2, 4, 8, 16 (ceil mode: 14 -> 7)
    probe = keras.Model(full.inputs, [full.get_layer(f"stage{i}").output for i in range(1, 5)])
    for got, want in zip(outs, probe.predict_on_batch(x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert squeezenet("1_1", include_top=False, pooling="avg").output.shape == (None, 512)
    probs = squeezenet("1_1", classes=7, classifier_activation="softmax").output
    assert probs.shape == (None, 7)
