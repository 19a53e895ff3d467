"""EfficientNetV2 family (recipes/efficientnet_v2.yaml, zoo/models/efficientnet.py:
efficientnet_v2): exact (float64) parity of the timm variants, fused-MBConv pitfalls.

With perturbed weights alone timm's V2 models are ill-conditioned in float32 (timm's depthwise
init and unnormalising BN statistics double the residual stream block after block, and the SE
gates then flip with summation order); the pipeline re-estimates BN statistics after perturbing,
so float32 parity holds (tests/test_catalogue.py, which also covers torchvision's V2-S). The
float64 tests check that the mapping is exact (~1e-11), where any mapping, padding or eps mistake
is O(1e-2) or more."""
import numpy as np
import pytest

import zoo
from helpers import SMALL, build, copy_weights, keras_float64, mapped, rel, torch_nhwc
from zoo.catalog import get_variant

TOL_F64 = 1e-8
TF_V2_S = "timm/tf_efficientnetv2_s"
TV_V2_S = "torchvision/efficientnet_v2_s"


def _mapped(name, float64=False, **builder_overrides):
    """(torch module, Keras model, variant): perturbed weights, recipe kwargs + overrides."""
    return (*mapped(name, float64=float64, **builder_overrides), get_variant(name)[0])


@pytest.fixture(scope="module")
def tf_v2_s():
    return _mapped(TF_V2_S, float64=True)


def _parity(module, model, variant, tolerance):
    from zoo.conversion.pipeline import torch_outputs
    from zoo.io_spec import image_batch
    from zoo.validate import compare_outputs, keras_outputs

    x = image_batch(SMALL, 3, variant.preprocessing).astype(np.float64)
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


def test_odd_non_square_size_tf_same(tf_v2_s):
    # 75 x 93: strided layers see both parities, TF "SAME" is asymmetric on the even ones.
    module, model, _ = tf_v2_s
    x = np.random.default_rng(3).standard_normal((2, 75, 93, 3))
    assert rel(model.predict_on_batch(x), torch_nhwc(module, x)) < TOL_F64


# ------------------------------------------------------------------ pitfalls

def test_pitfall_torchvision_v2_bn_eps_is_1e_3():
    """Unlike torchvision's B0-B7 (BatchNorm2d default 1e-5), V2 uses eps 1e-3: building it
    with the V1 default is refused by the engine."""
    with pytest.raises(zoo.MappingError, match=r"eps 0\.001 != keras epsilon 1e-05"):
        mapped(TV_V2_S, bn_eps=1e-5)


def test_pitfall_tf_same_padding_in_fused_blocks(tf_v2_s):
    """The fused blocks' strided 3x3 expansion convs (not depthwise) need TF "SAME" too: the
    same weights in a symmetric-padding model are far off at an even size."""
    module, good, _ = tf_v2_s
    with keras_float64():
        wrong = build(TF_V2_S, tf_padding=False)
    copy_weights(good, wrong)   # layers with weights: the symmetric model has extra ZeroPadding2D
    x = np.random.default_rng(0).standard_normal((2, SMALL, SMALL, 3))
    ref = torch_nhwc(module, x)
    assert rel(good.predict_on_batch(x), ref) < TOL_F64
    assert rel(wrong.predict_on_batch(x), ref) > 1e-2


def test_pitfall_rw_s_fused_stage1_has_two_convs():
    """timm's efficientnetv2_rw_s stage 1 is a fused block with expansion 1 that keeps both
    convs (3x3 + 1x1 projection), unlike tf_efficientnetv2_s / torchvision (3x3 only): the
    builder's `arch` must follow the source or the mapping leaves tensors unassigned."""
    with pytest.raises(zoo.MappingError, match=r"blocks\.0\.0\.conv_exp\.weight"):
        mapped("timm/efficientnetv2_rw_s", arch="s")
