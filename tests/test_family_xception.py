"""Xception family (recipes/xception.yaml, zoo/models/xception.py:xception): one test per pitfall
of timm's aligned xception41, and where its BatchNorms sit.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import pytest

import zoo
from helpers import build, plan_for, rebuilt, rel_err
from zoo.catalog import get_variant
from zoo.conversion.sources import load_torch_model

TOL = 1e-4
NAME = "timm/xception41"


@pytest.fixture(scope="module")
def torch_model():
    """The perturbed torch module zoo.convert compared with (fixed seed). Not conftest's shared
    one: test_pitfall_shortcut_reads_the_input_before_the_first_relu switches its ReLUs to
    in-place (and back), so this module gets a copy of its own."""
    variant, tag = get_variant(NAME)
    return load_torch_model(variant, tag, "random").module


def test_pitfall_strided_depthwise_convs_pad_symmetrically(converted_small, torch_model):
    """torch pads the stride-2 3x3 convs (stem and depthwise) by 1 on every side; TF "same"
    pads 0 before and 1 after on even inputs, shifting every downsampled map by one pixel (the
    global average pool then hides much of it: ~1e-3 on the logits, far more per stage)."""
    full, _ = converted_small(NAME)   # matches torch: tests/test_catalogue.py
    stage3 = ("blocks.2.stack.act3", "stage3")
    assert rel_err(torch_model, full, feature=stage3) < TOL
    assert rel_err(torch_model, rebuilt(full, NAME, padding="same"), feature=stage3) > 100 * TOL


def test_pitfall_shortcut_reads_the_input_before_the_first_relu(converted_small, torch_model):
    """Each module starts with ReLU(inplace=False): the stack sees relu(x), the shortcut the raw
    x. Made in-place, the same torch model is what a Keras graph taking the shortcut after the
    ReLU would compute; the converted model must not agree with it."""
    full, _ = converted_small(NAME)
    acts = [m.stack.act1 for m in torch_model.blocks if hasattr(m.stack, "act1")]
    assert acts and not any(a.inplace for a in acts)
    try:
        for a in acts:
            a.inplace = True
        err = rel_err(torch_model, full, feature=("blocks.11.stack.act3", "stage4"))
    finally:
        for a in acts:
            a.inplace = False
    assert err > 100 * TOL


def test_pitfall_batchnorm_eps_is_checked(torch_model):
    """The TF-trained aligned Xceptions use BatchNorm eps 1e-3, not torch's 1e-5: a builder left
    at torch's default is refused by the engine, every BN named."""
    with pytest.raises(zoo.MappingError) as e:
        plan_for(NAME, torch_model, build(NAME, bn_eps=1e-5))
    assert "eps 0.001 != keras epsilon 1e-05" in str(e.value)
    assert "'blocks.0.stack.conv1.bn_dw' -> keras layer 'block0_conv1_bn_dw'" in str(e.value)


def test_batchnorm_sits_between_depthwise_and_pointwise(converted_small):
    """timm's SeparableConv2d is dw -> BN -> pw -> BN (Keras' SeparableConv2D has no BN in
    between and could not hold bn_dw)."""
    full, _ = converted_small(NAME)
    assert full.get_layer("block0_conv1_pw").input is full.get_layer("block0_conv1_bn_dw").output
    assert full.get_layer("block0_conv1_bn_dw").input is full.get_layer("block0_conv1_dw").output
