"""Inception v3 family (recipes/inception_v3.yaml, zoo/models/inception.py:inception_v3): parity
of both sources at the smallest size the network accepts (75) and at an odd non-square size,
one test per pitfall, multi-scale features."""
import numpy as np
import pytest

import zoo
from zoo.catalog import get_variant
from zoo.conversion.sources import load_torch_model

TOL = 1e-4
MIN_SIZE = 75   # below 75 x 75 a feature map shrinks to nothing before Mixed_7a


@pytest.fixture(scope="module")
def converted():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = zoo.convert(name, input_size=MIN_SIZE)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def torch_module():
    """torch_module(name) -> the perturbed torch model (fixed seed: the weights zoo.convert
    uses), built once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            variant, tag = get_variant(name)
            cache[name] = load_torch_model(variant, tag, "random").module
        return cache[name]

    return get


def _inputs(h, w, seed=0):
    return np.random.default_rng(seed).standard_normal((2, h, w, 3)).astype(np.float32)


def _mapped(name, module, **builder_overrides):
    """Keras model built with the recipe's kwargs + overrides, with `module`'s weights mapped."""
    from zoo.conversion.mapping import apply_plan, plan_mapping
    from zoo.models import get_builder

    variant, _ = get_variant(name)
    model = get_builder(variant.builder)(**{**variant.builder_kwargs, **builder_overrides})
    state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    plan = plan_mapping(state, model, variant.rules, variant.recipe.ignore,
                        modules=dict(module.named_modules()), context=name)
    apply_plan(model, plan)
    return model


def _parity(name, module, model, x):
    """What validation measures: worst max_rel over the logits and every recipe feature."""
    from zoo.conversion.pipeline import torch_outputs
    from zoo.validate import compare_outputs, keras_outputs

    feats = dict(get_variant(name)[0].features)
    return compare_outputs(torch_outputs(module, x, feats),
                           keras_outputs(model, x, list(feats.values())), TOL)


@pytest.mark.parametrize("name", ["timm/inception_v3", "torchvision/inception_v3"])
def test_parity_small(name, converted):
    _model, report = converted(name)
    parity = report["parity"]["in_memory"]
    assert parity["max_rel"] < TOL, parity
    assert set(parity["features"]) == {f"stage{i}" for i in range(1, 6)}
    assert parity["logits"]["top1"] == 1.0


def test_parity_at_odd_non_square_size(converted, torch_module):
    # 79 x 97 -> 39 x 48 -> 37 x 46 -> pool 18 x 22 -> 16 x 20 -> 7 x 9 -> 3 x 4 -> 1 x 1
    name = "torchvision/inception_v3"
    model, _ = converted(name)
    parity = _parity(name, torch_module(name), model, _inputs(79, 97, seed=3))
    assert parity["passed"], parity
    assert parity["logits"]["top1"] == 1.0


def test_timm_and_torchvision_share_one_mapping_table():
    timm_v, _ = get_variant("timm/inception_v3")
    tv_v, _ = get_variant("torchvision/inception_v3")
    assert timm_v.rules == tv_v.rules and timm_v.builder == tv_v.builder == "inception_v3"
    assert not any(r.only or r.skip for r in timm_v.rules)


# ------------------------------------------------------------------ pitfalls

def test_pitfall_avg_pool_count_include_pad(monkeypatch, torch_module):
    """F.avg_pool2d(x, 3, 1, padding=1) divides border windows by 9 (count_include_pad=True);
    Keras "same" average pooling divides by the number of real pixels: every border pixel of
    every pooling branch is off."""
    import keras

    import zoo.models.inception as inc

    def keras_same(x, name):
        return keras.layers.AveragePooling2D(3, strides=1, padding="same", name=name)(x)

    monkeypatch.setattr(inc, "_avg_pool_3x3", keras_same)
    module = torch_module("timm/inception_v3")
    wrong = _mapped("timm/inception_v3", module)
    parity = _parity("timm/inception_v3", module, wrong, _inputs(MIN_SIZE, MIN_SIZE))
    assert parity["features"]["stage2"]["max_rel"] < TOL   # before the first Mixed block
    assert parity["features"]["stage3"]["max_rel"] > 1e-2, parity
    assert parity["logits"]["max_rel"] > 1e-2, parity


def test_pitfall_bn_eps_is_1e_3(torch_module):
    """Both sources use BatchNorm eps 1e-3; a Keras model with torch's default 1e-5 is refused by
    the engine (every BatchNorm reported) instead of converted slightly off."""
    with pytest.raises(zoo.MappingError) as e:
        _mapped("timm/inception_v3", torch_module("timm/inception_v3"), bn_eps=1e-5)
    msg = str(e.value)
    assert "eps 0.001 != keras epsilon 1e-05" in msg
    assert "torch module 'Conv2d_1a_3x3.bn' -> keras layer 'Conv2d_1a_3x3_bn'" in msg
    assert "94 problem(s)" in msg   # 5 stem + 3 x 7 (A) + 4 (B) + 4 x 10 (C) + 6 (D) + 2 x 9 (E)


def test_pitfall_torchvision_transform_input(torch_module):
    """torchvision's Inception3 (as its pretrained weights configure it) re-normalises the input
    inside the model; timm's does not. Forgetting it shifts every pixel."""
    module = torch_module("torchvision/inception_v3")
    wrong = _mapped("torchvision/inception_v3", module, transform_input=False)
    parity = _parity("torchvision/inception_v3", module, wrong, _inputs(MIN_SIZE, MIN_SIZE))
    assert parity["features"]["stage1"]["max_rel"] > 1e-1, parity
    assert parity["logits"]["max_rel"] > 1e-2, parity


def test_features_only_gives_one_output_per_stage(converted):
    import keras

    from zoo.models.inception import inception_v3

    full, _ = converted("timm/inception_v3")
    feats = inception_v3(features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [64, 192, 288, 768, 2048]
    for layer in feats.layers:
        layer.set_weights(full.get_layer(layer.name).get_weights())
    x = _inputs(MIN_SIZE, MIN_SIZE, seed=5)[:1]
    outs = feats.predict_on_batch(x)
    assert [o.shape[1] for o in outs] == [35, 15, 7, 3, 1]   # strides 2 ... 32, "valid" convs
    probe = keras.Model(full.inputs, [full.get_layer(f"stage{i}").output for i in range(1, 6)])
    for got, want in zip(outs, probe.predict_on_batch(x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
