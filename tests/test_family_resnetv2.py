"""ResNetV2 family (recipes/resnetv2.yaml, zoo/models/resnetv2.py:resnetv2): one test per
pitfall of the family (BiT: StdConv2d + GroupNorm; BatchNorm pre-activation).
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import pytest

import zoo
from helpers import build, plan_for, rebuilt, rel_err

TOL = 1e-4


def test_pitfall_weight_standardisation_is_not_a_plain_conv(converted_small, torch_model):
    """BiT's StdConv2d standardises its kernel at every call; a plain conv holding the same raw
    weights computes something else (same variable names and shapes: only numbers tell)."""
    name = "timm/resnetv2_50x1_bit"
    full, _ = converted_small(name)   # matches torch: tests/test_catalogue.py
    assert rel_err(torch_model(name), rebuilt(full, name, weight_std=False)) > 100 * TOL


@pytest.mark.parametrize("name,wrong", [("timm/resnetv2_50x1_bit", ""),
                                        ("timm/resnetv2_50", "fixed")])
def test_pitfall_stem_max_pool_padding(name, wrong, converted_small, torch_model):
    """The stem pool sees the raw (signed) conv output. BiT pads it with zeros ('fixed':
    ConstantPad2d(1, 0.) + MaxPool2d(3, 2)), resnetv2_50 with -inf (MaxPool2d(3, 2, padding=1));
    the other one changes every border window whose values are all negative. Compared at the
    pool itself: the next pre-activation BN + ReLU can zero those windows either way."""
    full, _ = converted_small(name)
    module = torch_model(name)
    pool = ("stem.pool", "stem_pool")
    assert rel_err(module, full, 67, 67, feature=pool) < TOL
    assert rel_err(module, rebuilt(full, name, stem_type=wrong), 67, 67, feature=pool) > 10 * TOL


def test_pitfall_group_norm_groups_are_checked(torch_model):
    """GroupNorm(32): a wrong group count keeps every shape; the engine compares it."""
    name = "timm/resnetv2_50x1_bit"
    with pytest.raises(zoo.MappingError) as e:
        plan_for(name, torch_model(name), build(name, gn_groups=16))
    assert "num_groups 32 != keras groups 16" in str(e.value)
