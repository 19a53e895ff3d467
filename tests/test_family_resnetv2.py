"""ResNetV2 family (recipes/resnetv2.yaml, zoo/models/resnetv2.py:resnetv2): parity of both
variants (BiT: StdConv2d + GroupNorm; BatchNorm pre-activation), odd non-square inputs, and one
test per pitfall of the family."""
import pytest

import zoo
from helpers import (
    SMALL,
    assert_features_match,
    assert_small_parity,
    build,
    parity_at,
    plan_for,
    random_input,
    rebuilt,
    rel_err,
)

TOL = 1e-4
VARIANTS = ["timm/resnetv2_50x1_bit", "timm/resnetv2_50"]


@pytest.mark.parametrize("name", VARIANTS)
def test_parity_small(name, converted_small):
    parity = assert_small_parity(converted_small(name)[1], 4, TOL)
    print(f"{name} @ {SMALL}: max_rel {parity['max_rel']:.2e}")


@pytest.mark.parametrize("name", VARIANTS)
def test_odd_non_square_size(name):
    # 75 x 93 -> 38 x 47 (stem conv) -> 19 x 24 (pool) -> ... : odd and even sizes at every
    # strided conv and at the stem pool, where the padding choices differ.
    err = parity_at(name, 75, 93, input_size=SMALL)
    assert err < TOL, err


def test_pitfall_weight_standardisation_is_not_a_plain_conv(converted_small, torch_model):
    """BiT's StdConv2d standardises its kernel at every call; a plain conv holding the same raw
    weights computes something else (same variable names and shapes: only numbers tell)."""
    name = "timm/resnetv2_50x1_bit"
    full, _ = converted_small(name)   # matches torch: test_parity_small
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


def test_features_only_gives_one_output_per_stage(converted_small):
    full, _ = converted_small("timm/resnetv2_50")
    feats = build("timm/resnetv2_50", features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [256, 512, 1024, 2048]
    outs = assert_features_match(feats, full, random_input(n=1, seed=5), 4)
    assert [o.shape[1] for o in outs] == [16, 8, 4, 2]   # strides 4 ... 32
