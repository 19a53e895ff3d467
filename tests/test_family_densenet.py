"""DenseNet family (recipes/densenet.yaml, zoo/models/densenet.py:densenet): parity of the
DenseNet-121s of both sources at a small and an odd non-square size, one test per pitfall,
multi-scale features."""
import pytest

import zoo
from helpers import (
    assert_features_match,
    assert_small_parity,
    mapped_onto,
    random_input,
    validation_parity,
)
from zoo.catalog import get_variant

TOL = 1e-4


@pytest.mark.parametrize("name, last", [("timm/densenet121", "stage4"),
                                        ("torchvision/densenet121", "norm5")])
def test_parity_small(name, last, converted_small):
    # timm's norm5 includes the ReLU (compared with stage4), torchvision's does not (norm5 BN)
    assert_small_parity(converted_small(name)[1], ["stage1", "stage2", "stage3", last], TOL)


def test_parity_at_odd_non_square_size(converted_small, torch_model):
    # 75 x 93 -> 38 x 47 -> 19 x 24 -> transitions (floor) 9 x 12 -> 4 x 6 -> 2 x 3
    name = "timm/densenet121"
    model, _ = converted_small(name)
    parity = validation_parity(name, torch_model(name), model, random_input(75, 93, seed=3), TOL)
    assert parity["passed"], parity
    assert parity["logits"]["top1"] == 1.0


def test_timm_and_torchvision_share_one_mapping_table():
    timm_v, _ = get_variant("timm/densenet121")
    tv_v, _ = get_variant("torchvision/densenet121")
    assert timm_v.rules == tv_v.rules and timm_v.builder == tv_v.builder == "densenet"
    assert not any(r.only or r.skip for r in timm_v.rules)


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
    assert parity["logits"]["max_rel"] > 1e-2, parity


def test_pitfall_pre_activation_order(monkeypatch, torch_model):
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
    module = torch_model(name)
    with pytest.raises(zoo.MappingError, match="shape mismatch"):
        # norm1 normalises the block input (C channels), not the bottleneck (4k): shapes differ
        mapped_onto(name, module)


def test_features_only_gives_one_output_per_stage(converted_small):
    from zoo.models.densenet import densenet

    full, _ = converted_small("timm/densenet121")
    feats = densenet(features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [256, 512, 1024, 1024]
    outs = assert_features_match(feats, full, random_input(seed=5)[:1], 4)
    assert [o.shape[1] for o in outs] == [16, 8, 4, 2]   # strides 4 ... 32
