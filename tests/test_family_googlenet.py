"""GoogLeNet family (recipes/googlenet.yaml, zoo/models/googlenet.py:googlenet): the torch
configuration the recipe assumes, one test per pitfall, the input transform layer.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import numpy as np
import pytest
import torch

import zoo
from helpers import mapped_onto, random_input, validation_parity
from zoo.catalog import get_variant

NAME = "torchvision/googlenet"
TOL = 1e-4
# With random weights the logits of this model hardly depend on the input (see the recipe): the
# stage features of validation_parity are what catch input-side mistakes.


@pytest.fixture
def module(torch_model):
    """The perturbed torch model (fixed seed: the weights zoo.convert uses)."""
    return torch_model(NAME)


def test_random_pretrained_and_recipe_agree_on_the_torch_config(module):
    """torchvision's pretrained googlenet has transform_input=True and no aux heads; the recipe
    builds the random model with the same transform and ignores the aux heads it keeps."""
    variant, _ = get_variant(NAME)
    assert module.transform_input is True
    assert variant.builder_kwargs["transform_input"] is True
    assert module.aux1 is not None   # present in the random model, inactive in eval()
    assert any(p.fullmatch("aux1.fc2.weight") for p in variant.recipe.ignore)


# ------------------------------------------------------------------ pitfalls

def test_pitfall_transform_input_must_match_the_torch_model(module):
    """The torch model re-normalises its input (ImageNet mean/std -> (x - 0.5) / 0.5); a Keras
    model without that step sees differently scaled pixels."""
    wrong = mapped_onto(NAME, module, transform_input=False)
    parity = validation_parity(NAME, module, wrong, random_input(), TOL)
    assert parity["features"]["stage1"]["max_rel"] > 1e-1, parity


def test_transform_input_layer_matches_torch_and_survives_keras_save(tmp_path, module):
    import keras

    from zoo.models.googlenet import transform_input_layer

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, transform_input_layer(inputs))
    model.save(tmp_path / "t.keras")
    reloaded = keras.saving.load_model(tmp_path / "t.keras", safe_mode=True)
    x = random_input(7, 5)
    with torch.no_grad():
        ref = module._transform_input(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    ref = ref.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(reloaded.predict_on_batch(x), ref, rtol=0, atol=1e-6)


def test_pitfall_bn_eps_is_1e_3(module):
    """torchvision's BasicConv2d uses BatchNorm eps 1e-3; a Keras model with torch's default
    1e-5 is refused by the engine (every BatchNorm reported) instead of converted slightly off."""
    with pytest.raises(zoo.MappingError) as e:
        mapped_onto(NAME, module, bn_eps=1e-5)
    msg = str(e.value)
    assert "eps 0.001 != keras epsilon 1e-05" in msg
    assert "torch module 'conv1.bn' -> keras layer 'conv1_bn'" in msg
    assert "57 problem(s)" in msg   # conv1-3 + 9 inception blocks x 6 BasicConv2d


def test_pitfall_max_pool_ceil_mode(monkeypatch, module):
    """Every max-pool has ceil_mode=True: torch adds a partial window at the bottom/right.
    Pooling in floor mode (what Keras' "valid" does) drops it: different sizes, different
    logits."""
    import zoo.models.googlenet as gmod
    from zoo.layers import TorchMaxPool2D

    def floor_mode(*args, **kwargs):
        return TorchMaxPool2D(*args, **{**kwargs, "ceil_mode": False})

    monkeypatch.setattr(gmod, "TorchMaxPool2D", floor_mode)
    wrong = mapped_onto(NAME, module)
    parity = validation_parity(NAME, module, wrong, random_input(), TOL)
    # 64 -> conv1 32 -> maxpool1: 16 (ceil) vs 15 (floor): stage1 does not even have the same size
    assert parity["features"]["stage1"]["error"] == "shape (2, 15, 15, 192) != reference (2, 16, 16, 192)"
    assert not parity["passed"] and parity["outputs"]["logits"]["max_rel"] > 1e-4, parity
