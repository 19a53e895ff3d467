"""BEiT family (recipes/beit.yaml, zoo/models/beit.py:beit): the relative position index against
timm's buffer, the attention block against timm's Beit `Attention` on its own, a small real timm
`Beit` mapped by the recipe's rules (logits, every block, features, headless, `.keras`), and
the fixed input size. tests/test_catalogue.py runs models at small sizes, which a fixed-size
model cannot take: these tests stand in for it on a 2-block, 32 px Beit."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import keras
import numpy as np
import pytest
import torch
from fixed_size_models import (
    assert_headless_features_and_files,
    assert_logits_and_blocks,
    mapped_small,
)

from helpers import (
    assert_layernorm_eps_refused,
    assign_leaves,
    build,
    perturbed_params,
    random_input,
    rel,
)
from zoo.layers.relative_position import RelPosAttention, relative_position_index
from zoo.models.blocks_transformer import attention

NAME = "timm/beit_base_patch16_224"
DIM, HEADS, GRID = 32, 4, (3, 4)
SMALL = dict(img_size=32, patch_size=8, embed_dim=DIM, depth=2, num_heads=HEADS)
KWARGS = dict(depth=2, dim=DIM, heads=HEADS, patch=8, img_size=32, classes=10)   # the same


# ------------------------------------------------------------------ relative position

@pytest.mark.parametrize("grid", [(14, 14), (3, 4), (5, 2), (1, 1)])
def test_relative_position_index_is_timms_buffer(grid):
    """The Keras-side rebuild equals timm's `relative_position_index` buffer (square, non-square
    both ways, a single patch), class-token rows and column included."""
    from timm.models.beit import gen_relative_position_index

    want = gen_relative_position_index(grid).numpy()
    got = relative_position_index(grid)
    assert got.shape == want.shape == (grid[0] * grid[1] + 1,) * 2
    np.testing.assert_array_equal(got, want)


def _attention_pair(seed):
    from timm.models.beit import Attention

    tm = perturbed_params(Attention(DIM, num_heads=HEADS, qkv_bias=True, window_size=GRID), seed)
    inp = keras.Input((GRID[0] * GRID[1] + 1, DIM))
    model = keras.Model(inp, attention(inp, HEADS, "attn", qkv_bias=False,
                                       core=lambda n: RelPosAttention(HEADS, GRID, name=n)))
    assign_leaves(model.get_layer("attn_qkv"), dict(tm.qkv.named_parameters()), "linear")
    assign_leaves(model.get_layer("attn_proj"), dict(tm.proj.named_parameters()), "linear")
    assign_leaves(model.get_layer("attn_attn"), dict(tm.named_parameters(recurse=False)), "identity")
    x = np.random.default_rng(seed + 1).standard_normal((2, GRID[0] * GRID[1] + 1, DIM))
    x = x.astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    return model, x, ref


def test_attention_matches_timm():
    """timm's Beit Attention (bias-free fused qkv Linear + cat(q_bias, 0, v_bias), relative
    position bias table gathered per head, non-square window) = Dense -> RelPosAttention ->
    Dense, mapped with `linear` and `identity` as the recipe maps them."""
    model, x, ref = _attention_pair(0)
    assert rel(model(x), ref) < 1e-5


def test_pitfall_relative_position_index_direction():
    """The bias of query i on key j is table[index[i, j]]: the transposed index (j on i) runs
    with the same shapes and is another function."""
    model, x, ref = _attention_pair(2)
    layer = model.get_layer("attn_attn")
    layer._index = relative_position_index(GRID).T.reshape(-1)
    assert rel(model(x), ref) > 1e-2


def test_pitfall_qkv_bias_order():
    """timm adds cat(q_bias, zeros, v_bias). A bias on k shifts every logit of a query by the
    same q.b_k, which the softmax cancels (so the zero `k_bias` buffer is safely ignored), but
    the v bias must reach v: cat(q_bias, v_bias, zeros), the two parameters in a row, is wrong."""
    model, x, ref = _attention_pair(4)
    layer, qkv = model.get_layer("attn_attn"), model.get_layer("attn_qkv")

    def with_extra_bias(k_part, v_part):   # added to the qkv output before RelPosAttention
        extra = keras.ops.concatenate([keras.ops.zeros((DIM,)), k_part, v_part])
        out = model.get_layer("attn_proj")(layer(qkv.output + extra))
        return keras.Model(model.input, out)(x)

    noise = np.random.default_rng(5).standard_normal(DIM).astype(np.float32)
    assert rel(with_extra_bias(noise, np.zeros(DIM, np.float32)), ref) < 1e-5
    v_bias = np.asarray(layer.v_bias)
    assert rel(with_extra_bias(v_bias, -v_bias), ref) > 1e-2


# ------------------------------------------------------------------ a small real Beit

@pytest.fixture(scope="module")
def small():
    """(timm Beit like beit_base_patch16_224 but 2 blocks of width 32 at 32 px, perturbed;
    the Keras model of the recipe's builder at that size, mapped by the recipe's rules)."""
    import timm

    module = perturbed_params(timm.create_model(NAME.split("/")[1], num_classes=10, **SMALL), seed=5)
    return module, mapped_small(NAME, module, **KWARGS)


def test_small_beit_with_the_recipe_rules(small):
    """Logits and both blocks (tokens incl. the class token) equal timm's; the gamma of each
    residual, the q/v biases and every table take part (all perturbed)."""
    assert_logits_and_blocks(*small, random_input(32, 32, seed=6), depth=2)


def test_headless_features_and_keras_file(small, tmp_path):
    """include_top=False ends at timm's forward_features (tokens; `norm` is the identity under
    fc_norm), features_only and feature_info are timm's, the `.keras` file reloads (the gamma
    paths and the grid kept)."""
    loaded = assert_headless_features_and_files(NAME, *small, random_input(32, 32, seed=7),
                                                     tmp_path, **KWARGS)
    assert {"block0/gamma_1", "block0/gamma_2"} <= {v.path for v in loaded.weights}
    assert loaded.get_layer("block1_attn_attn").grid == (4, 4)


# ------------------------------------------------------------------ input size

def test_other_input_size_is_refused_by_the_builder():
    """The table is laid out for one patch grid: the builder refuses another input shape, saying
    why. (--input-size rebuilds both models at that size instead, the tables resized by timm's
    checkpoint filter: tests/test_checkpoint_geometry.py.)"""
    with pytest.raises(ValueError, match="relative position bias table is laid out for the "
                                         "14x14 patch grid"):
        build(NAME, input_shape=(96, 96, 3))


def test_pitfall_layernorm_eps(small):
    """BEiT's LayerNorms use eps 1e-6; the engine refuses a model built with torch's default
    1e-5, naming the norms of both blocks and fc_norm (5 in all)."""
    assert_layernorm_eps_refused(NAME, 1e-6, 1e-5, ("blocks.0.norm1", "block0_norm1"),
                                 ("fc_norm", "fc_norm"), 5, module=small[0], **KWARGS)
