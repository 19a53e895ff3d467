"""DenseNet family (recipes/densenet.yaml, zoo/models/densenet.py:densenet): one mapping
table for both sources, one test per pitfall.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import pytest

import zoo
from helpers import assert_one_mapping_table, mapped_onto, random_input, validation_parity

TOL = 1e-4


def test_timm_and_torchvision_share_one_mapping_table():
    assert_one_mapping_table("densenet121", "densenet")


# ------------------------------------------------------------------ pitfalls

def test_pitfall_dense_concat_order(monkeypatch, torch_model):
    """torch.cat([block input, new_1, ..., new_k], 1): the next layer's norm1/conv1 see the
    channels in that order. Prepending the new maps instead keeps every shape, so the mapping
    is accepted, but every dense layer after the first reads permuted channels."""
    import keras

    import zoo.models.densenet as dmod

    def reversed_concat(features, new, name):
        return keras.layers.Concatenate(axis=-1, name=name)([new, features])

    monkeypatch.setattr(dmod, "_dense_concat", reversed_concat)
    name = "torchvision/densenet121"
    module = torch_model(name)
    wrong = mapped_onto(name, module)
    parity = validation_parity(name, module, wrong, random_input(), TOL)
    assert parity["features"]["stage1"]["max_rel"] > 1e-1, parity
    assert parity["outputs"]["logits"]["max_rel"] > 1e-2, parity


def test_pitfall_pre_activation_order(monkeypatch, torch_model):
    """DenseNet is BN -> ReLU -> conv; a post-activation port (conv -> BN -> ReLU) builds the
    same variables and maps cleanly, and is wrong from the first dense layer on."""
    import zoo.models.densenet as dmod
    from zoo.models.blocks import conv2d

    def post_activation(x, growth_rate, bn_size, name):
        y = dmod._bn_relu(conv2d(x, bn_size * growth_rate, 1, name=f"{name}_conv1"),
                          f"{name}_norm1")
        return dmod._bn_relu(conv2d(y, growth_rate, 3, name=f"{name}_conv2"), f"{name}_norm2")

    monkeypatch.setattr(dmod, "_dense_layer", post_activation)
    name = "timm/densenet121"
    module = torch_model(name)
    with pytest.raises(zoo.MappingError, match="shape mismatch"):
        # norm1 normalises the block input (C channels), not the bottleneck (4k): shapes differ
        mapped_onto(name, module)
