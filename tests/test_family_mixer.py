"""MLP-Mixer family (recipes/mixer.yaml, zoo/models/mixer.py:mixer): a small real timm `MlpMixer`
mapped by the recipe's rules (logits, every block, features, headless, `.keras`), the explicit
transpose around the token-mixing MLP, LayerNorm eps and the fixed input size. The model runs at
one size only, so tests/test_catalogue.py skips it and these tests stand in for it."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import keras
import numpy as np
import pytest
import torch

import zoo
import zoo.models.mixer as mixer_module
from helpers import build, copy_weights, eager, plan_for, random_input, rel, torch_nhwc
from zoo.models.blocks_transformer import layer_norm, mlp

NAME = "timm/mixer_b16_224"
# 32 px, patch 8: 16 tokens of width 16, so the token and channel axes have the same length and
# a block that mixes the wrong axis still runs (test_pitfall_token_mixing_needs_the_transpose)
KWARGS = dict(depth=2, dim=16, patch=8, img_size=32, classes=10)


@pytest.fixture(scope="module")
def small():
    """(timm MlpMixer like mixer_b16_224 but 2 blocks of width 16 at 32 px, every parameter
    perturbed; the Keras model of the recipe's builder at that size, mapped by its rules)."""
    from timm.models.mlp_mixer import MlpMixer

    from zoo.conversion.mapping import apply_plan

    # mixer_b16_224 is MlpMixer(patch_size=16, num_blocks=12, embed_dim=768) at 224 px
    module = MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=16)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.3))
    module.eval()
    model = build(NAME, **KWARGS)
    plan = plan_for(NAME, module, model)
    assert {a.torch_key for a in plan} == set(module.state_dict())   # nothing left over
    apply_plan(model, plan)
    return module, model


def test_small_mixer_with_the_recipe_rules(small):
    """Logits and both blocks equal timm's (token MLP fc1 is (tokens_dim, N) in torch, mapped
    with plain `linear` onto the Dense after the transpose)."""
    module, model = small
    x = random_input(32, 32, seed=1)
    captured = {}
    for i in (0, 1):
        module.blocks[i].register_forward_hook(
            lambda _m, _i, out, i=i: captured.__setitem__(f"block{i}", out.numpy()))
    ref = torch_nhwc(module, x)
    logits, *blocks = eager(model, x, ["block0", "block1"])
    assert rel(logits, ref) < 1e-5
    assert (logits.argmax(1) == ref.argmax(1)).all()
    for i, got in enumerate(blocks):
        assert rel(got, captured[f"block{i}"]) < 1e-5
    assert tuple(model.get_layer("block0_mlp_tokens_fc1").kernel.shape) == (16, 8)


def test_headless_features_and_keras_file(small, tmp_path):
    """include_top=False ends at timm's forward_features (normalised tokens); features_only
    gives every block with timm's feature_info channels and reduction; the `.keras` file
    reloads in safe mode to the same function."""
    from zoo.models import feature_info

    module, model = small
    x = random_input(32, 32, seed=2)
    headless = copy_weights(model, build(NAME, include_top=False, **KWARGS))
    with torch.no_grad():
        want = module.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert rel(eager(headless, x)[0], want) < 1e-5

    feats = copy_weights(model, build(NAME, features_only=True, **KWARGS))
    assert [(i["name"], i["channels"], i["reduction"]) for i in feature_info(feats)] == [
        (f"block{i}", t["num_chs"], t["reduction"]) for i, t in enumerate(module.feature_info)]

    path = tmp_path / "mixer.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(eager(loaded, x)[0], eager(model, x)[0])


def _mixes_channels_twice(x, tokens_dim, channels_dim, *, name, eps=1e-6):
    """mixer_block without the transposes: the token MLP's Dense acts on the channel axis."""
    p = f"{name}_"
    x = keras.layers.Add(name=p + "add1")([x, mlp(layer_norm(x, eps, p + "norm1"), tokens_dim,
                                                  p + "mlp_tokens")])
    y = mlp(layer_norm(x, eps, p + "norm2"), channels_dim, p + "mlp_channels")
    return keras.layers.Add(name=p + "add2")([x, y])


def test_pitfall_token_mixing_needs_the_transpose(small, monkeypatch):
    """With as many tokens as channels, a token MLP applied without the transposes has the
    same weight shapes (the mapping accepts it) and is another function."""
    module, model = small
    monkeypatch.setattr(mixer_module, "mixer_block", _mixes_channels_twice)
    wrong = copy_weights(model, build(NAME, **KWARGS))
    x = random_input(32, 32, seed=3)
    assert rel(eager(wrong, x)[0], torch_nhwc(module, x)) > 1e-2


def test_pitfall_layernorm_eps(small):
    """Mixer's LayerNorms use eps 1e-6; the engine refuses a model built with torch's default
    1e-5, naming both norms of each block and the final one (5 in all)."""
    module, _ = small
    with pytest.raises(zoo.MappingError) as e:
        plan_for(NAME, module, build(NAME, norm_eps=1e-5, **KWARGS))
    msg = str(e.value)
    assert "eps 1e-06 != keras epsilon 1e-05" in msg
    assert "torch module 'blocks.0.norm1' -> keras layer 'block0_norm1'" in msg
    assert "torch module 'norm' -> keras layer 'norm'" in msg
    assert "5 problem(s)" in msg


def test_other_input_size_is_refused():
    """The token MLP has one weight per patch position: another input shape is refused by the
    builder and another --input-size by the conversion, both saying why."""
    with pytest.raises(ValueError, match="token-mixing MLP has one weight per patch position "
                                         "of the 14x14 grid"):
        build(NAME, input_shape=(96, 96, 3))
    with pytest.raises(zoo.ZooError, match=r"input_size 96 refused: recipe mixer\.yaml fixes "
                                           r"input 'image' at 224x224"):
        zoo.convert(NAME, input_size=96)
