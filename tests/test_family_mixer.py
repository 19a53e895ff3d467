"""MLP-Mixer family (recipes/mixer.yaml, zoo/models/mixer.py:mixer): a small real timm `MlpMixer`
mapped by the recipe's rules (logits, every block, features, headless, `.keras`), the explicit
transpose around the token-mixing MLP, LayerNorm eps and the fixed input size. The model runs at
one size only, so tests/test_catalogue.py skips it and these tests stand in for it."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import keras
import pytest
from fixed_size_models import (
    assert_headless_features_and_files,
    assert_logits_and_blocks,
    assert_other_sizes_refused,
    mapped_small,
)

import zoo.models.mixer as mixer_module
from helpers import (
    assert_layernorm_eps_refused,
    build,
    copy_weights,
    eager,
    perturbed_params,
    random_input,
    rel,
    torch_nhwc,
)
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

    # mixer_b16_224 is MlpMixer(patch_size=16, num_blocks=12, embed_dim=768) at 224 px
    module = perturbed_params(MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2,
                                embed_dim=16))
    return module, mapped_small(NAME, module, **KWARGS)


def test_small_mixer_with_the_recipe_rules(small):
    """Logits and both blocks equal timm's (token MLP fc1 is (tokens_dim, N) in torch, mapped
    with plain `linear` onto the Dense after the transpose)."""
    assert_logits_and_blocks(*small, random_input(32, 32, seed=1), depth=2)
    assert tuple(small[1].get_layer("block0_mlp_tokens_fc1").kernel.shape) == (16, 8)


def test_headless_features_and_keras_file(small, tmp_path):
    """include_top=False ends at timm's forward_features (normalised tokens), features_only and
    feature_info are timm's, the `.keras` file reloads to the same function."""
    assert_headless_features_and_files(NAME, *small, random_input(32, 32, seed=2), tmp_path,
                                            **KWARGS)


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
    assert_layernorm_eps_refused(NAME, 1e-6, 1e-5, ("blocks.0.norm1", "block0_norm1"), ("norm", "norm"), 5,
                                 module=small[0], **KWARGS)


def test_other_input_size_is_refused():
    """The token MLP has one weight per patch position: another input shape is refused by the
    builder and another --input-size by the conversion, both saying why."""
    assert_other_sizes_refused(NAME, r"mixer\.yaml",
                               "token-mixing MLP has one weight per patch position of the 14x14 grid")
