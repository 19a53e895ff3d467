"""EfficientNetV2 family (recipes/efficientnet_v2.yaml, zoo/models/efficientnet.py:
efficientnet_v2): parity of both sources, odd non-square inputs, fused-MBConv pitfalls.

With perturbed weights alone timm's V2 models are ill-conditioned in float32 (timm's depthwise
init and unnormalising BN statistics double the residual stream block after block, and the SE
gates then flip with summation order); the pipeline re-estimates BN statistics after perturbing,
so float32 parity holds (test_parity_small_timm_float32). The float64 tests check that the
mapping is exact (~1e-11), where any mapping, padding or eps mistake is O(1e-2) or more."""
from contextlib import contextmanager, nullcontext

import numpy as np
import pytest
import torch

import zoo
from helpers import SMALL
from zoo.catalog import get_variant
from zoo.conversion.sources import load_torch_model

TOL = 1e-4
TOL_F64 = 1e-8


def _torch_nhwc(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def _rel(got, ref):
    return float(np.abs(np.asarray(got) - ref).max() / np.abs(ref).max())


@contextmanager
def _float64():
    """Build Keras layers in float64 (their dtype policy is fixed at construction)."""
    import keras

    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)


def _mapped(name, float64=False, **builder_overrides):
    """(torch module, Keras model, variant): perturbed weights, recipe kwargs + overrides."""
    from zoo.conversion.mapping import apply_plan, plan_mapping
    from zoo.models import get_builder

    variant, tag = get_variant(name)
    tm = load_torch_model(variant, tag, "random")
    with _float64() if float64 else nullcontext():
        model = get_builder(variant.builder)(**{**variant.builder_kwargs, **builder_overrides})
    plan = plan_mapping(tm.state_dict_numpy(), model, variant.rules, variant.recipe.ignore,
                        modules=dict(tm.module.named_modules()), context=name)
    apply_plan(model, plan)
    return (tm.module.double() if float64 else tm.module), model, variant


@pytest.fixture(scope="module")
def tf_v2_s():
    return _mapped("timm/tf_efficientnetv2_s", float64=True)


@pytest.fixture(scope="module")
def tv_v2_s():
    return zoo.convert("torchvision/efficientnet_v2_s", input_size=SMALL)


def test_parity_small_torchvision(tv_v2_s):
    _model, report = tv_v2_s
    parity = report["parity"]["in_memory"]
    assert parity["max_rel"] < TOL, parity
    assert set(parity["features"]) == {f"stage{i}" for i in range(1, 7)}


def _parity(module, model, variant, tolerance):
    from zoo.conversion.pipeline import torch_outputs
    from zoo.validate import compare_outputs, keras_outputs, make_inputs

    x = make_inputs(SMALL, 3, variant.preprocessing).astype(np.float64)
    feats = dict(variant.features)
    return compare_outputs(torch_outputs(module, x, feats),
                           keras_outputs(model, x, list(feats.values())), tolerance)


def test_parity_small_timm_tf_same_float64(tf_v2_s):
    parity = _parity(*tf_v2_s, TOL_F64)
    assert parity["passed"], parity["max_rel"]
    assert set(parity["features"]) == {f"stage{i}" for i in range(1, 7)}


def test_parity_small_timm_rw_s_float64():
    parity = _parity(*_mapped("timm/efficientnetv2_rw_s", float64=True), TOL_F64)
    assert parity["passed"], parity["max_rel"]


@pytest.mark.parametrize("name", ["timm/efficientnetv2_rw_s", "timm/tf_efficientnetv2_s"])
def test_parity_small_timm_float32(name):
    from helpers import parity_at

    assert parity_at(name, SMALL, SMALL, input_size=SMALL) < TOL


def test_odd_non_square_size_tf_same(tf_v2_s):
    # 75 x 93: strided layers see both parities, TF "SAME" is asymmetric on the even ones.
    module, model, _ = tf_v2_s
    x = np.random.default_rng(3).standard_normal((2, 75, 93, 3))
    assert _rel(model.predict_on_batch(x), _torch_nhwc(module, x)) < TOL_F64


def test_odd_non_square_size_symmetric(tv_v2_s):
    model, _ = tv_v2_s
    variant, tag = get_variant("torchvision/efficientnet_v2_s")
    module = load_torch_model(variant, tag, "random").module   # same seed: same weights
    x = np.random.default_rng(3).standard_normal((2, 75, 93, 3)).astype(np.float32)
    assert _rel(model.predict_on_batch(x), _torch_nhwc(module, x)) < TOL


# ------------------------------------------------------------------ pitfalls

def test_pitfall_torchvision_v2_bn_eps_is_1e_3():
    """Unlike torchvision's B0-B7 (BatchNorm2d default 1e-5), V2 uses eps 1e-3: building it
    with the V1 default is refused by the engine."""
    with pytest.raises(zoo.MappingError, match=r"eps 0\.001 != keras epsilon 1e-05"):
        _mapped("torchvision/efficientnet_v2_s", bn_eps=1e-5)


def test_pitfall_tf_same_padding_in_fused_blocks(tf_v2_s):
    """The fused blocks' strided 3x3 expansion convs (not depthwise) need TF "SAME" too: the
    same weights in a symmetric-padding model are far off at an even size."""
    module, good, variant = tf_v2_s
    from zoo.models import get_builder

    with _float64():
        wrong = get_builder(variant.builder)(**{**variant.builder_kwargs, "tf_padding": False})
    for layer in wrong.layers:
        if layer.weights:   # the symmetric model has extra ZeroPadding2D layers
            layer.set_weights(good.get_layer(layer.name).get_weights())
    x = np.random.default_rng(0).standard_normal((2, SMALL, SMALL, 3))
    ref = _torch_nhwc(module, x)
    assert _rel(good.predict_on_batch(x), ref) < TOL_F64
    assert _rel(wrong.predict_on_batch(x), ref) > 1e-2


def test_pitfall_rw_s_fused_stage1_has_two_convs():
    """timm's efficientnetv2_rw_s stage 1 is a fused block with expansion 1 that keeps both
    convs (3x3 + 1x1 projection), unlike tf_efficientnetv2_s / torchvision (3x3 only): the
    builder's `arch` must follow the source or the mapping leaves tensors unassigned."""
    with pytest.raises(zoo.MappingError, match=r"blocks\.0\.0\.conv_exp\.weight"):
        _mapped("timm/efficientnetv2_rw_s", arch="s")


def test_features_only_gives_one_output_per_stage():
    from zoo.models.efficientnet import efficientnet_v2

    feats = efficientnet_v2("s", features_only=True, input_shape=(SMALL, SMALL, 3))
    assert [tuple(o.shape[1:]) for o in feats.outputs] == [
        (32, 32, 24), (16, 16, 48), (8, 8, 64), (4, 4, 128), (4, 4, 160), (2, 2, 256)]
