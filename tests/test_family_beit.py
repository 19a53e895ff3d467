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

import zoo
from helpers import build, eager, plan_for, random_input, rel, torch_nhwc
from zoo.layers.relative_position import RelPosAttention, relative_position_index
from zoo.models.blocks_transformer import attention
from zoo.transforms import TRANSFORMS

NAME = "timm/beit_base_patch16_224"
DIM, HEADS, GRID = 32, 4, (3, 4)
SMALL = dict(img_size=32, patch_size=8, embed_dim=DIM, depth=2, num_heads=HEADS)


def _perturbed(module, seed=0):
    """Every parameter (biases, tables and gammas start at 0 or a constant) set to noise."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.3))
    return module.eval()


def _assign(layer, torch_tensors, transform):
    """The transform's leaf functions, as the mapping engine applies them."""
    t = TRANSFORMS[transform]
    kvars = {v.path.rsplit("/", 1)[-1]: v for v in layer.weights}
    for leaf, tensor in torch_tensors.items():
        kname, fn = t.leaf(leaf)
        kvars[kname].assign(fn(tensor.detach().numpy(), target_shape=tuple(kvars[kname].shape)))


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

    tm = _perturbed(Attention(DIM, num_heads=HEADS, qkv_bias=True, window_size=GRID), seed)
    inp = keras.Input((GRID[0] * GRID[1] + 1, DIM))
    model = keras.Model(inp, attention(inp, HEADS, "attn", qkv_bias=False,
                                       core=lambda n: RelPosAttention(HEADS, GRID, name=n)))
    _assign(model.get_layer("attn_qkv"), dict(tm.qkv.named_parameters()), "linear")
    _assign(model.get_layer("attn_proj"), dict(tm.proj.named_parameters()), "linear")
    _assign(model.get_layer("attn_attn"), dict(tm.named_parameters(recurse=False)), "identity")
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

    from zoo.conversion.mapping import apply_plan

    module = _perturbed(timm.create_model(NAME.split("/")[1], num_classes=10, **SMALL), seed=5)
    model = build(NAME, depth=2, dim=DIM, heads=HEADS, patch=8, img_size=32, classes=10)
    plan = plan_for(NAME, module, model)
    assert {a.torch_key for a in plan} == set(module.state_dict())   # nothing left over
    apply_plan(model, plan)
    return module, model


def test_small_beit_with_the_recipe_rules(small):
    """Logits and both blocks (tokens incl. the class token) equal timm's; the gamma of each
    residual, the q/v biases and every table take part (all perturbed)."""
    module, model = small
    x = random_input(32, 32, seed=6)
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


def test_headless_features_and_keras_file(small, tmp_path):
    """include_top=False ends at timm's forward_features (tokens; `norm` is the identity under
    fc_norm); features_only gives every block with timm's feature_info channels and reduction;
    the `.keras` file reloads in safe mode (gamma paths and grid kept) to the same function."""
    from helpers import copy_weights
    from zoo.models import feature_info

    module, model = small
    x = random_input(32, 32, seed=7)
    kwargs = dict(depth=2, dim=DIM, heads=HEADS, patch=8, img_size=32, classes=10)
    headless = copy_weights(model, build(NAME, include_top=False, **kwargs))
    with torch.no_grad():
        want = module.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert rel(eager(headless, x)[0], want) < 1e-5

    feats = copy_weights(model, build(NAME, features_only=True, **kwargs))
    info = feature_info(feats)
    assert [(i["name"], i["channels"], i["reduction"]) for i in info] == [
        (f"block{i}", t["num_chs"], t["reduction"]) for i, t in enumerate(module.feature_info)]

    path = tmp_path / "beit.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(eager(loaded, x)[0], eager(model, x)[0])
    assert {"block0/gamma_1", "block0/gamma_2"} <= {v.path for v in loaded.weights}
    assert loaded.get_layer("block1_attn_attn").grid == (4, 4)


# ------------------------------------------------------------------ input size

def test_other_input_size_is_refused():
    """The table is laid out for one patch grid: the builder refuses another input shape and
    the conversion refuses --input-size, both saying why, before any model is built."""
    with pytest.raises(ValueError, match="relative position bias table is laid out for the "
                                         "14x14 patch grid"):
        build(NAME, input_shape=(96, 96, 3))
    with pytest.raises(zoo.ZooError, match=r"input_size 96 refused: recipe beit\.yaml fixes "
                                           r"input 'image' at 224x224"):
        zoo.convert(NAME, input_size=96)


def test_pitfall_layernorm_eps(small):
    """BEiT's LayerNorms use eps 1e-6; the engine refuses a model built with torch's default
    1e-5, naming the norms of both blocks and fc_norm (5 in all)."""
    module, _ = small
    model = build(NAME, depth=2, dim=DIM, heads=HEADS, patch=8, img_size=32, classes=10,
                  norm_eps=1e-5)
    with pytest.raises(zoo.MappingError) as e:
        plan_for(NAME, module, model)
    msg = str(e.value)
    assert "torch module 'fc_norm' -> keras layer 'fc_norm'" in msg
    assert "5 problem(s)" in msg
