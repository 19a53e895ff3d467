"""Inception v3 family (recipes/inception_v3.yaml, zoo/models/inception.py:inception_v3): parity
of both sources at the smallest size the network accepts (75) and at an odd non-square size,
one test per pitfall, multi-scale features."""
import pytest

import zoo
from helpers import assert_features_match, assert_small_parity, mapped_onto, random_input, validation_parity
from zoo.catalog import get_variant

TOL = 1e-4
MIN_SIZE = 75   # below 75 x 75 a feature map shrinks to nothing before Mixed_7a


@pytest.mark.parametrize("name", ["timm/inception_v3", "torchvision/inception_v3"])
def test_parity_small(name, converted_small):
    assert_small_parity(converted_small(name, MIN_SIZE)[1], 5, TOL)


def test_parity_at_odd_non_square_size(converted_small, torch_model):
    # 79 x 97 -> 39 x 48 -> 37 x 46 -> pool 18 x 22 -> 16 x 20 -> 7 x 9 -> 3 x 4 -> 1 x 1
    name = "torchvision/inception_v3"
    model, _ = converted_small(name, MIN_SIZE)
    parity = validation_parity(name, torch_model(name), model, random_input(79, 97, seed=3), TOL)
    assert parity["passed"], parity
    assert parity["logits"]["top1"] == 1.0


def test_timm_and_torchvision_share_one_mapping_table():
    timm_v, _ = get_variant("timm/inception_v3")
    tv_v, _ = get_variant("torchvision/inception_v3")
    assert timm_v.rules == tv_v.rules and timm_v.builder == tv_v.builder == "inception_v3"
    assert not any(r.only or r.skip for r in timm_v.rules)


# ------------------------------------------------------------------ pitfalls

def test_pitfall_avg_pool_count_include_pad(monkeypatch, torch_model):
    """F.avg_pool2d(x, 3, 1, padding=1) divides border windows by 9 (count_include_pad=True);
    Keras "same" average pooling divides by the number of real pixels: every border pixel of
    every pooling branch is off."""
    import keras

    import zoo.models.inception as inc

    def keras_same(x, name):
        return keras.layers.AveragePooling2D(3, strides=1, padding="same", name=name)(x)

    monkeypatch.setattr(inc, "_avg_pool_3x3", keras_same)
    module = torch_model("timm/inception_v3")
    wrong = mapped_onto("timm/inception_v3", module)
    parity = validation_parity("timm/inception_v3", module, wrong, random_input(MIN_SIZE, MIN_SIZE),
                               TOL)
    assert parity["features"]["stage2"]["max_rel"] < TOL   # before the first Mixed block
    assert parity["features"]["stage3"]["max_rel"] > 1e-2, parity
    assert parity["logits"]["max_rel"] > 1e-2, parity


def test_pitfall_bn_eps_is_1e_3(torch_model):
    """Both sources use BatchNorm eps 1e-3; a Keras model with torch's default 1e-5 is refused by
    the engine (every BatchNorm reported) instead of converted slightly off."""
    with pytest.raises(zoo.MappingError) as e:
        mapped_onto("timm/inception_v3", torch_model("timm/inception_v3"), bn_eps=1e-5)
    msg = str(e.value)
    assert "eps 0.001 != keras epsilon 1e-05" in msg
    assert "torch module 'Conv2d_1a_3x3.bn' -> keras layer 'Conv2d_1a_3x3_bn'" in msg
    assert "94 problem(s)" in msg   # 5 stem + 3 x 7 (A) + 4 (B) + 4 x 10 (C) + 6 (D) + 2 x 9 (E)


def test_pitfall_torchvision_transform_input(torch_model):
    """torchvision's Inception3 (as its pretrained weights configure it) re-normalises the input
    inside the model; timm's does not. Forgetting it shifts every pixel."""
    name = "torchvision/inception_v3"
    module = torch_model(name)
    wrong = mapped_onto(name, module, transform_input=False)
    parity = validation_parity(name, module, wrong, random_input(MIN_SIZE, MIN_SIZE), TOL)
    assert parity["features"]["stage1"]["max_rel"] > 1e-1, parity
    assert parity["logits"]["max_rel"] > 1e-2, parity


def test_features_only_gives_one_output_per_stage(converted_small):
    from zoo.models.inception import inception_v3

    full, _ = converted_small("timm/inception_v3", MIN_SIZE)
    feats = inception_v3(features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [64, 192, 288, 768, 2048]
    outs = assert_features_match(feats, full, random_input(MIN_SIZE, MIN_SIZE, seed=5)[:1], 5)
    assert [o.shape[1] for o in outs] == [35, 15, 7, 3, 1]   # strides 2 ... 32, "valid" convs
