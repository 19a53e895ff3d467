"""LeViT family (recipes/levit.yaml, zoo/models/levit.py): the rebuilt attention-bias index against
timm's buffer, the attention and downsampling modules on their own against timm's, a small real
timm LeViT mapped by the recipe's rules (logits, every stage, include_top=False, features_only,
`.keras` round trip), and the pitfalls. LeViT's input size is fixed by its bias tables, so
tests/test_catalogue.py leaves it out (the recipe's `inputs:` shape); the small model here
stands in for it, and scripts/convert_all.py converts levit_128s at 224."""
import zoo.conversion.torch_first  # noqa: F401  (torch, timm before keras)

# isort: split

import keras
import numpy as np
import pytest
import torch
from fixed_size_models import assert_other_sizes_refused
from torch import nn

import zoo
from helpers import (
    assert_saved_model_reproduces,
    copy_weights,
    eager,
    plan_for,
    random_input,
    rel,
    torch_nhwc,
)
from zoo.catalog import get_variant
from zoo.conversion.mapping import apply_plan, plan_mapping
from zoo.conversion.sources import perturb_
from zoo.layers.levit import attention_bias_indices
from zoo.models.levit import levit, levit_attention, levit_downsample

NAME = "timm/levit_128s"
# a small LeViT with the published architecture (distilled, hard-swish, stem 16): 80 px gives
# an odd 5 x 5 token grid, subsampled to 3 x 3 and 2 x 2 (timm's ceil division)
SMALL = dict(img_size=80, embed_dim=(32, 48, 64), key_dim=8, num_heads=(2, 3, 4), depth=(1, 2, 1))
SIZE = SMALL["img_size"]


def _tokens(n, dim, seed):
    return np.random.default_rng(seed).standard_normal((2, n, dim)).astype(np.float32)


def _mapped(torch_module, path, keras_body, input_shape, seed=0):
    """(torch module perturbed, Keras model of `keras_body(input)` with its weights mapped by the
    recipe's rules): the module is placed at `path` ("stages.0.blocks.0.attn", ...) of an
    otherwise empty network, where levit_128s has it."""
    perturb_(torch_module, seed=seed)
    root = node = nn.Module()
    parts = path.split(".")
    for part in parts[:-1]:
        child = nn.Module()
        node.add_module(part, child)
        node = child
    node.add_module(parts[-1], torch_module)
    inp = keras.Input(input_shape)
    model = keras.Model(inp, keras_body(inp))
    variant, _ = get_variant(NAME)
    state = {k: v.numpy() for k, v in root.state_dict().items()}
    apply_plan(model, plan_mapping(state, model, variant.rules, variant.recipe.ignore,
                                   modules=dict(root.named_modules()), context=path))
    torch_module.eval()   # (levit's Attention.train returns None: no chaining)
    return torch_module, model


def _run(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


# ------------------------------------------------------------------ attention biases

@pytest.mark.parametrize("resolution", [14, 7, 5, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_attention_bias_indices_match_timm(resolution, stride):
    """The index rebuilt from the resolution equals timm's attention_bias_idxs buffer, for the
    blocks (stride 1, N x N) and the downsampling attention (stride 2, ceil(r/2)^2 x N)."""
    from timm.models.levit import Attention, AttentionDownsample

    module = (Attention(16, 4, num_heads=2, resolution=resolution) if stride == 1 else
              AttentionDownsample(16, 24, 4, num_heads=2, stride=stride, resolution=resolution))
    want = module.attention_bias_idxs.numpy()
    got = attention_bias_indices(resolution, stride)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ attention modules

def test_attention_matches_timm():
    """timm's levit Attention (qkv LinearNorm split per head, biases, hard-swish, proj
    LinearNorm) = linear_norm -> LevitAttention -> hard-swish -> linear_norm, mapped by the
    recipe's rules."""
    from timm.models.levit import Attention

    dim, res = 32, 5
    module, model = _mapped(
        Attention(dim, 8, num_heads=2, attn_ratio=2.0, resolution=res, act_layer=nn.Hardswish),
        "stages.0.blocks.0.attn",
        lambda x: levit_attention(x, 2, 8, 2.0, res, "stage1_block0_attn", "hard_swish"),
        (res * res, dim))
    x = _tokens(res * res, dim, 1)
    assert rel(model(x), _run(module, x)) < 1e-5


def test_attention_downsample_matches_timm():
    """timm's LevitDownsample: AttentionDownsample (kv split per head into [k | v], queries from
    every other token of the odd 5 x 5 grid, 9 x 25 biases) and the residual MLP."""
    from timm.models.levit import LevitDownsample

    in_dim, out_dim, res = 32, 48, 5
    module, model = _mapped(
        LevitDownsample(in_dim, out_dim, key_dim=8, num_heads=in_dim // 8, resolution=res,
                        act_layer=nn.Hardswish),
        "stages.1.downsample",
        lambda x: levit_downsample(x, out_dim, 8, res, "stage2_down", "hard_swish"),
        (res * res, in_dim), seed=2)
    x = _tokens(res * res, in_dim, 3)
    want = _run(module, x)
    assert want.shape == (2, 9, out_dim)
    assert rel(model(x), want) < 1e-5


# ------------------------------------------------------------------ the whole network

@pytest.fixture(scope="module")
def small():
    """(timm LevitDistilled of SMALL's architecture, perturbed; Keras model mapped by the
    recipe's rules)."""
    import timm

    module = timm.create_model("levit_128s", num_classes=10, **SMALL)
    perturb_(module, seed=4)
    module.eval()
    model = levit(dims=SMALL["embed_dim"], depths=SMALL["depth"], heads=SMALL["num_heads"],
                  key_dim=SMALL["key_dim"], img_size=SIZE, classes=10,
                  input_shape=(SIZE, SIZE, 3))
    plan = plan_for(NAME, module, model)
    # every tensor but the BN step counters is mapped
    assert {a.torch_key for a in plan} == {k for k in module.state_dict()
                                          if not k.endswith("num_batches_tracked")}
    apply_plan(model, plan)
    return module, model


def _stages(module, x):
    seen = {}
    hooks = [module.stages[i].register_forward_hook(
        lambda _m, _i, out, i=i: seen.__setitem__(f"stage{i + 1}", out.numpy())) for i in range(3)]
    logits = torch_nhwc(module, x)
    for h in hooks:
        h.remove()
    return logits, seen


def test_small_levit_matches_timm(small):
    """Logits and every stage's tokens (B, N, C) equal timm's, mapped by the recipe's rules."""
    module, model = small
    x = random_input(SIZE, SIZE, seed=5)
    ref, stages = _stages(module, x)
    logits, *feats = eager(model, x, list(stages))
    assert rel(logits, ref) < 1e-4
    assert (logits.argmax(1) == ref.argmax(1)).all()
    for name, got in zip(stages, feats):
        assert got.shape == stages[name].shape
        assert rel(got, stages[name]) < 1e-4, name


def test_headless_features_and_keras_file(small, tmp_path):
    """include_top=False ends at timm's forward_features (pooled: its mean over the tokens);
    features_only returns the three stages with timm's feature_info channels and reductions;
    the `.keras` file reloads to the same function, the SavedModel's serving signature gives
    timm's logits."""
    module, model = small
    x = random_input(SIZE, SIZE, seed=6)
    build = dict(dims=SMALL["embed_dim"], depths=SMALL["depth"], heads=SMALL["num_heads"],
                 key_dim=SMALL["key_dim"], img_size=SIZE, input_shape=(SIZE, SIZE, 3))
    with torch.no_grad():
        tokens = module.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    headless = copy_weights(model, levit(include_top=False, pooling="avg", **build))
    assert rel(eager(headless, x)[0], tokens.mean(1)) < 1e-4

    feats = copy_weights(model, levit(features_only=True, **build))
    info = [(i["channels"], i["reduction"]) for i in zoo.models.feature_info(feats)]
    assert info == [(i["num_chs"], i["reduction"]) for i in module.feature_info]
    _, stages = _stages(module, x)
    for got, want in zip(eager(feats, x), stages.values()):
        assert rel(got, want) < 1e-4

    path = tmp_path / "levit.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(eager(loaded, x)[0], eager(model, x)[0])
    assert_saved_model_reproduces(model, x, _stages(module, x)[0], tmp_path, 1e-4)


def test_other_input_sizes_are_refused():
    """The bias tables fix the token grid: another size fails when the model is built, saying
    why, and the conversion refuses it naming the recipe (timm's own forward cannot run it)."""
    assert_other_sizes_refused(NAME, r"levit\.yaml",
                               "attention biases are tables over the 14x14 token grid")


def test_default_input_is_the_fixed_size():
    assert zoo.create_model(NAME).input_shape == (None, 224, 224, 3)


# ------------------------------------------------------------------ pitfalls

def test_pitfall_qkv_is_split_per_head():
    """LeViT's fused qkv is (heads, [q | k | v]); reading it as ViT's (q|k|v, heads, head_dim)
    -- same shapes when val_dim = key_dim -- runs and is another function."""
    from timm.models.levit import Attention

    dim, res, heads, kd = 32, 4, 2, 8
    module, model = _mapped(
        Attention(dim, kd, num_heads=heads, attn_ratio=1.0, resolution=res, act_layer=nn.Hardswish),
        "stages.0.blocks.0.attn",
        lambda x: levit_attention(x, heads, kd, 1.0, res, "stage1_block0_attn", "hard_swish"),
        (res * res, dim), seed=7)
    x = _tokens(res * res, dim, 8)
    ref = _run(module, x)
    assert rel(model(x), ref) < 1e-5
    # permute the qkv LinearNorm's output features (kernel columns and BN channels alike) so that
    # the per-head split sees what a (3, heads, head_dim) split would
    order = np.arange(3 * heads * kd).reshape(3, heads, kd).transpose(1, 0, 2).reshape(-1)
    for layer in ("stage1_block0_attn_qkv_linear", "stage1_block0_attn_qkv_bn"):
        layer = model.get_layer(layer)
        layer.set_weights([w[..., order] for w in layer.get_weights()])
    assert rel(model(x), ref) > 1e-2


def test_pitfall_zero_initialised_attention_biases_hide_a_missing_mapping():
    """timm initialises attention_biases to zero, so a conversion that dropped them (or read
    them through a wrong index) would match a freshly built timm model exactly; with the biases
    perturbed, as validation does, zero biases in Keras are clearly wrong."""
    from timm.models.levit import Attention

    assert not Attention(16, 4, num_heads=2, resolution=4).attention_biases.detach().any()
    dim, res = 32, 4
    module, model = _mapped(
        Attention(dim, 8, num_heads=2, attn_ratio=2.0, resolution=res, act_layer=nn.Hardswish),
        "stages.0.blocks.0.attn",
        lambda x: levit_attention(x, 2, 8, 2.0, res, "stage1_block0_attn", "hard_swish"),
        (res * res, dim), seed=9)
    x = _tokens(res * res, dim, 10)
    ref = _run(module, x)
    assert rel(model(x), ref) < 1e-5
    attn = model.get_layer("stage1_block0_attn")
    attn.attention_biases.assign(np.zeros(attn.attention_biases.shape, np.float32))
    assert rel(model(x), ref) > 1e-2


def test_pitfall_distilled_heads_are_averaged(small):
    """timm's LevitDistilled returns (head(x) + head_dist(x)) / 2 in eval; the class head alone
    is another function."""
    module, model = small
    x = random_input(SIZE, SIZE, seed=11)
    ref = torch_nhwc(module, x)
    assert rel(model(x), ref) < 1e-4
    head_only = keras.Model(model.input, model.get_layer("head_linear").output)
    assert rel(head_only(x), ref) > 1e-2
