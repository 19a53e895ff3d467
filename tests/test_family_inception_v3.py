"""Inception v3 family (recipes/inception_v3.yaml, zoo/models/inception.py:inception_v3): one
mapping table for both sources, one test per pitfall (at the smallest size the network accepts).
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import pytest

import zoo
from helpers import MIN_SIZE, assert_one_mapping_table, mapped_onto, random_input, validation_parity

TOL = 1e-4
SIZE = MIN_SIZE["inception_v3"]


def test_timm_and_torchvision_share_one_mapping_table():
    assert_one_mapping_table("inception_v3", "inception_v3")


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
    parity = validation_parity("timm/inception_v3", module, wrong, random_input(SIZE, SIZE),
                               TOL)
    assert parity["features"]["stage2"]["max_rel"] < TOL   # before the first Mixed block
    assert parity["features"]["stage3"]["max_rel"] > 1e-2, parity
    assert parity["outputs"]["logits"]["max_rel"] > 1e-2, parity


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
    parity = validation_parity(name, module, wrong, random_input(SIZE, SIZE), TOL)
    assert parity["features"]["stage1"]["max_rel"] > 1e-1, parity
    assert parity["outputs"]["logits"]["max_rel"] > 1e-2, parity
