"""DenseNet family (recipes/densenet.yaml, zoo/models/densenet.py:densenet): parity of the
DenseNet-121s of both sources at a small and an odd non-square size, one test per pitfall,
multi-scale features."""
import numpy as np
import pytest

import zoo
from helpers import SMALL
from zoo.catalog import get_variant
from zoo.conversion.sources import load_torch_model

TOL = 1e-4


@pytest.fixture(scope="module")
def converted():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = zoo.convert(name, input_size=SMALL)
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


@pytest.mark.parametrize("name, last", [("timm/densenet121", "stage4"),
                                        ("torchvision/densenet121", "norm5")])
def test_parity_small(name, last, converted):
    _model, report = converted(name)
    parity = report["parity"]["in_memory"]
    assert parity["max_rel"] < TOL, parity
    # timm's norm5 includes the ReLU (compared with stage4), torchvision's does not (norm5 BN)
    assert set(parity["features"]) == {"stage1", "stage2", "stage3", last}
    assert parity["logits"]["top1"] == 1.0


def test_parity_at_odd_non_square_size(converted, torch_module):
    # 75 x 93 -> 38 x 47 -> 19 x 24 -> transitions (floor) 9 x 12 -> 4 x 6 -> 2 x 3
    name = "timm/densenet121"
    model, _ = converted(name)
    parity = _parity(name, torch_module(name), model, _inputs(75, 93, seed=3))
    assert parity["passed"], parity
    assert parity["logits"]["top1"] == 1.0


def test_timm_and_torchvision_share_one_mapping_table():
    timm_v, _ = get_variant("timm/densenet121")
    tv_v, _ = get_variant("torchvision/densenet121")
    assert timm_v.rules == tv_v.rules and timm_v.builder == tv_v.builder == "densenet"
    assert not any(r.only or r.skip for r in timm_v.rules)


# ------------------------------------------------------------------ pitfalls

def test_pitfall_dense_concat_order(monkeypatch, torch_module):
    """torch.cat([block input, new_1, ..., new_k], 1): the next layer's norm1/conv1 see the
    channels in that order. Prepending the new maps instead keeps every shape, so the mapping
    is accepted, but every dense layer after the first reads permuted channels."""
    import keras

    import zoo.models.densenet as dmod

    def reversed_concat(features, new, name):
        return keras.layers.Concatenate(axis=-1, name=name)([new, features])

    monkeypatch.setattr(dmod, "_dense_concat", reversed_concat)
    name = "torchvision/densenet121"
    module = torch_module(name)
    wrong = _mapped(name, module)
    parity = _parity(name, module, wrong, _inputs(SMALL, SMALL))
    assert parity["features"]["stage1"]["max_rel"] > 1e-1, parity
    assert parity["logits"]["max_rel"] > 1e-2, parity


def test_pitfall_pre_activation_order(monkeypatch, torch_module):
    """DenseNet is BN -> ReLU -> conv; a post-activation port (conv -> BN -> ReLU) builds the
    same variables and maps cleanly, and is wrong from the first dense layer on."""
    import zoo.models.densenet as dmod
    from zoo.models.common import conv2d

    def post_activation(x, growth_rate, bn_size, name):
        y = dmod._bn_relu(conv2d(x, bn_size * growth_rate, 1, name=f"{name}_conv1"),
                          f"{name}_norm1")
        return dmod._bn_relu(conv2d(y, growth_rate, 3, name=f"{name}_conv2"), f"{name}_norm2")

    monkeypatch.setattr(dmod, "_dense_layer", post_activation)
    name = "timm/densenet121"
    module = torch_module(name)
    with pytest.raises(zoo.MappingError, match="shape mismatch"):
        # norm1 normalises the block input (C channels), not the bottleneck (4k): shapes differ
        _mapped(name, module)


def test_features_only_gives_one_output_per_stage(converted):
    import keras

    from zoo.models.densenet import densenet

    full, _ = converted("timm/densenet121")
    feats = densenet(features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [256, 512, 1024, 1024]
    for layer in feats.layers:
        layer.set_weights(full.get_layer(layer.name).get_weights())
    x = _inputs(SMALL, SMALL, seed=5)[:1]
    outs = feats.predict_on_batch(x)
    assert [o.shape[1] for o in outs] == [16, 8, 4, 2]   # strides 4 ... 32
    probe = keras.Model(full.inputs, [full.get_layer(f"stage{i}").output for i in range(1, 5)])
    for got, want in zip(outs, probe.predict_on_batch(x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
