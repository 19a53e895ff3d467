"""ResNetV2 family (recipes/resnetv2.yaml, zoo/models/resnetv2.py:resnetv2): parity of both
variants (BiT: StdConv2d + GroupNorm; BatchNorm pre-activation), odd non-square inputs, and one
test per pitfall of the family."""
import numpy as np
import pytest
import torch

import zoo
from helpers import SMALL, parity_at
from zoo.catalog import get_variant
from zoo.conversion.sources import load_torch_model

TOL = 1e-4
VARIANTS = ["timm/resnetv2_50x1_bit", "timm/resnetv2_50"]


@pytest.fixture(scope="module")
def converted():
    """converted(name) -> (keras model, report) at SMALL, each converted once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = zoo.convert(name, input_size=SMALL)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def torch_model():
    """torch_model(name) -> the perturbed torch module zoo.convert compared with (fixed seed)."""
    cache = {}

    def get(name):
        if name not in cache:
            variant, tag = get_variant(name)
            cache[name] = load_torch_model(variant, tag, "random").module
        return cache[name]

    return get


def _rebuilt(full, name, **builder_overrides):
    """The recipe's Keras model built with `builder_overrides`, carrying the converted weights
    (copied layer by layer: the overrides change functions, not variable names or shapes)."""
    from zoo.models.resnetv2 import resnetv2

    variant, _ = get_variant(name)
    model = resnetv2(**{**variant.builder_kwargs, **builder_overrides})
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    return model


def _rel_err(module, model, h=SMALL, w=SMALL, feature=None):
    """max|keras - torch| / max|torch| of the logits, or of a stage output
    (feature = (torch module path, keras layer name))."""
    import keras

    x = np.random.default_rng(11).standard_normal((2, h, w, 3)).astype(np.float32)
    captured = {}
    hook = None
    if feature:
        hook = module.get_submodule(feature[0]).register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("f", out.detach().clone()))
        model = keras.Model(model.inputs, model.get_layer(feature[1]).output)
    try:
        with torch.no_grad():
            ref = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    finally:
        if hook:
            hook.remove()
    if feature:
        ref = captured["f"].permute(0, 2, 3, 1).numpy()
    got = np.asarray(model.predict_on_batch(x))
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", VARIANTS)
def test_parity_small(name, converted):
    _model, report = converted(name)
    parity = report["parity"]["in_memory"]
    print(f"{name} @ {SMALL}: max_rel {parity['max_rel']:.2e}")
    assert parity["max_rel"] < TOL, parity
    assert set(parity["features"]) == {"stage1", "stage2", "stage3", "stage4"}
    assert parity["logits"]["top1"] == 1.0


@pytest.mark.parametrize("name", VARIANTS)
def test_odd_non_square_size(name):
    # 75 x 93 -> 38 x 47 (stem conv) -> 19 x 24 (pool) -> ... : odd and even sizes at every
    # strided conv and at the stem pool, where the padding choices differ.
    err = parity_at(name, 75, 93, input_size=SMALL)
    assert err < TOL, err


def test_pitfall_weight_standardisation_is_not_a_plain_conv(converted, torch_model):
    """BiT's StdConv2d standardises its kernel at every call; a plain conv holding the same raw
    weights computes something else (same variable names and shapes: only numbers tell)."""
    name = "timm/resnetv2_50x1_bit"
    full, _ = converted(name)   # matches torch: test_parity_small
    assert _rel_err(torch_model(name), _rebuilt(full, name, weight_std=False)) > 100 * TOL


@pytest.mark.parametrize("name,wrong", [("timm/resnetv2_50x1_bit", ""),
                                        ("timm/resnetv2_50", "fixed")])
def test_pitfall_stem_max_pool_padding(name, wrong, converted, torch_model):
    """The stem pool sees the raw (signed) conv output. BiT pads it with zeros ('fixed':
    ConstantPad2d(1, 0.) + MaxPool2d(3, 2)), resnetv2_50 with -inf (MaxPool2d(3, 2, padding=1));
    the other one changes every border window whose values are all negative. Compared at the
    pool itself: the next pre-activation BN + ReLU can zero those windows either way."""
    full, _ = converted(name)
    module = torch_model(name)
    pool = ("stem.pool", "stem_pool")
    assert _rel_err(module, full, 67, 67, feature=pool) < TOL
    assert _rel_err(module, _rebuilt(full, name, stem_type=wrong), 67, 67, feature=pool) > 10 * TOL


def test_pitfall_group_norm_groups_are_checked(torch_model):
    """GroupNorm(32): a wrong group count keeps every shape; the engine compares it."""
    from zoo.conversion.mapping import plan_mapping
    from zoo.models.resnetv2 import resnetv2

    name = "timm/resnetv2_50x1_bit"
    variant, _ = get_variant(name)
    module = torch_model(name)
    model = resnetv2(**{**variant.builder_kwargs, "gn_groups": 16})
    state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    with pytest.raises(zoo.MappingError) as e:
        plan_mapping(state, model, variant.rules, variant.recipe.ignore,
                     modules=dict(module.named_modules()), context=name)
    assert "num_groups 32 != keras groups 16" in str(e.value)


def test_features_only_gives_one_output_per_stage(converted):
    import keras

    from zoo.models.resnetv2 import resnetv2

    full, _ = converted("timm/resnetv2_50")
    variant, _ = get_variant("timm/resnetv2_50")
    feats = resnetv2(**variant.builder_kwargs, features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [256, 512, 1024, 2048]
    for layer in feats.layers:
        layer.set_weights(full.get_layer(layer.name).get_weights())
    x = np.random.default_rng(5).standard_normal((1, SMALL, SMALL, 3)).astype(np.float32)
    outs = feats.predict_on_batch(x)
    assert [o.shape[1] for o in outs] == [16, 8, 4, 2]   # strides 4 ... 32
    probe = keras.Model(full.inputs, [full.get_layer(f"stage{i}").output for i in range(1, 5)])
    for got, want in zip(outs, probe.predict_on_batch(x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
