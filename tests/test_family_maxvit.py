"""MaxViT family (recipes/maxvit.yaml, zoo/models/maxvit.py:maxvit): the partitions and the
relative-position attention against timm's and torchvision's modules on their own, the derived
bias index against the torch buffers, small real timm/torchvision MaxViTs mapped by the recipe
rules (all stages and logits), and one test per pitfall of the family.
The catalogue model (maxvit_tiny_tf_224) runs at 224 px in tests/test_catalogue.py: its
partition size 7 is fixed by the checkpoint, so nothing smaller exists."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import copy
import dataclasses
import functools
import re

import keras
import numpy as np
import pytest
import torch
from fixed_size_models import assert_other_sizes_refused

from helpers import (
    assert_saved_model_reproduces,
    build,
    copy_weights,
    eager,
    plan_for,
    random_input,
    rel,
    torch_nhwc,
)
from zoo.io_spec import default_inputs
from zoo.layers.gelu import GELU
from zoo.layers.partition_attention import (
    Partition,
    PartitionAttention,
    Unpartition,
    bias_index,
)

TIMM = "timm/maxvit_tiny_tf_224"
TOL = 1e-4
DIM, HEADS = 64, 2        # MaxViT heads are 32 wide
SMALL = dict(depths=(1, 2, 1, 1), dims=(32, 64, 64, 96), stem_width=16)
SIZE, WINDOW = 64, 2      # timm: partition size = img_size // 32


def _randomise(module, seed, scale=0.3):
    """Every parameter N(0, scale): the bias tables too (initialised at std 0.02, a wrong index
    would hardly show)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module.eval()


def _keras_attention(window, layout, scale=None):
    inp = keras.Input((None, None, window * window, DIM))
    qkv = keras.layers.Dense(3 * DIM, name="qkv")
    attn = PartitionAttention(HEADS, window, layout, scale=scale, name="attn")
    proj = keras.layers.Dense(DIM, name="proj")
    return keras.Model(inp, proj(attn(qkv(inp)))), qkv, attn, proj


def _set_linear(dense, linear):
    dense.kernel.assign(linear.weight.detach().numpy().T)
    dense.bias.assign(linear.bias.detach().numpy())


def _windows(window, seed):
    """(B, rows, cols, p*p, C) windowed tokens, as Partition returns them."""
    return np.random.default_rng(seed).standard_normal(
        (2, 2, 3, window * window, DIM)).astype(np.float32)


def _timm_attention(window, seed):
    from timm.layers import RelPosBiasTf
    from timm.models.maxxvit import AttentionCl

    rel_pos = functools.partial(RelPosBiasTf, window_size=(window, window))
    return _randomise(AttentionCl(DIM, DIM, dim_head=DIM // HEADS, head_first=False,
                                  rel_pos_cls=rel_pos), seed)


# ------------------------------------------------------------------ attention

def test_attention_matches_timm():
    """timm's AttentionCl with RelPosBiasTf (every _tf_ MaxViT: fused qkv (q|k|v, heads,
    head_dim), bias table (heads, 2p-1, 2p-1)) = Dense -> PartitionAttention("tf") -> Dense, with
    the recipe's transforms (linear, identity), on windows of a non-square 3 x 3 partition."""
    tm = _timm_attention(3, seed=0)
    model, qkv, attn, proj = _keras_attention(3, "tf")
    _set_linear(qkv, tm.qkv)
    _set_linear(proj, tm.proj)
    attn.table.assign(tm.rel_pos.relative_position_bias_table.detach().numpy())
    x = _windows(3, seed=1)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x.reshape(-1, 9, DIM))).numpy().reshape(x.shape)
    assert rel(model(x), ref) < 1e-5


def test_attention_matches_torchvision():
    """torchvision's RelativePositionalMultiHeadAttention (to_qkv chunked q|k|v then heads,
    table ((2p-1)^2, heads), scale feat_dim^-0.5) = the same Keras layers with layout "swin"
    and scale width^-0.5."""
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention

    tm = _randomise(RelativePositionalMultiHeadAttention(DIM, DIM // HEADS, 9), seed=2)
    model, qkv, attn, proj = _keras_attention(3, "swin", scale=DIM ** -0.5)
    _set_linear(qkv, tm.to_qkv)
    _set_linear(proj, tm.merge)
    attn.table.assign(tm.relative_position_bias_table.detach().numpy())
    x = _windows(3, seed=3)
    with torch.no_grad():   # torchvision takes (B, G, P, D)
        ref = tm(torch.from_numpy(x.reshape(2, 6, 9, DIM))).numpy().reshape(x.shape)
    assert rel(model(x), ref) < 1e-5


@pytest.mark.parametrize("window", [2, 3, 7])
def test_relative_position_index_matches_the_torch_buffers(window):
    """The index PartitionAttention derives = torchvision's saved `relative_position_index`
    buffer ("swin") and the cells timm's one-hot `height_lookup` / `width_lookup` buffers
    select ("tf"); and the bias gathered with it = timm's `get_bias()`."""
    from timm.layers import RelPosBiasTf
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention

    tv = RelativePositionalMultiHeadAttention(DIM, DIM // HEADS, window * window)
    np.testing.assert_array_equal(bias_index((window, window), "swin"),
                                  tv.relative_position_index.numpy())
    tm = _randomise(RelPosBiasTf((window, window), HEADS), seed=window)
    rows = tm.height_lookup.numpy().argmax(-1)   # [query row, key row] -> table row
    cols = tm.width_lookup.numpy().argmax(-1)
    want = rows[:, None, :, None] * (2 * window - 1) + cols[None, :, None, :]
    np.testing.assert_array_equal(bias_index((window, window), "tf"),
                                  want.reshape(window ** 2, window ** 2))
    layer = PartitionAttention(HEADS, window, "tf")
    layer.build((None, window * window, 3 * DIM))
    layer.table.assign(tm.relative_position_bias_table.detach().numpy())
    np.testing.assert_array_equal(np.asarray(layer.bias()), tm.get_bias().detach().numpy())


def test_pitfall_bias_offset_sign():
    """timm's TF tables are indexed by key - query, torchvision's (Swin's) by query - key: the
    two index rules give the same shapes, and reading a tf table with the swin offset (its
    transpose over (query, key)) is another function."""
    tm = _timm_attention(3, seed=4)
    model, qkv, attn, proj = _keras_attention(3, "tf")
    _set_linear(qkv, tm.qkv)
    _set_linear(proj, tm.proj)
    table = tm.rel_pos.relative_position_bias_table.detach().numpy()
    attn.table.assign(table[:, ::-1, ::-1])   # key - query read as query - key
    x = _windows(3, seed=5)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x.reshape(-1, 9, DIM))).numpy().reshape(x.shape)
    assert rel(model(x), ref) > 1e-2
    attn.table.assign(table)
    assert rel(model(x), ref) < 1e-5


def test_pitfall_torchvision_scales_by_the_width():
    """torchvision scales q k^T by feat_dim^-0.5 (the block width), not head_dim^-0.5: the
    usual scale on its weights is wrong."""
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention

    tm = _randomise(RelativePositionalMultiHeadAttention(DIM, DIM // HEADS, 9), seed=6)
    model, qkv, attn, proj = _keras_attention(3, "swin")   # scale None: head_dim^-0.5
    _set_linear(qkv, tm.to_qkv)
    _set_linear(proj, tm.merge)
    attn.table.assign(tm.relative_position_bias_table.detach().numpy())
    x = _windows(3, seed=7)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x.reshape(2, 6, 9, DIM))).numpy().reshape(x.shape)
    assert rel(model(x), ref) > 1e-2


# ------------------------------------------------------------------ partitions

@pytest.mark.parametrize("mode", ["block", "grid"])
def test_partition_matches_timm_and_inverts(mode):
    """Partition = timm's window_partition / grid_partition (windows in (B, rows, cols) order,
    tokens row-major) on a non-square map, and Unpartition undoes it exactly."""
    from timm.models.maxxvit import grid_partition, window_partition

    p = 3
    x = np.random.default_rng(8).standard_normal((2, 6, 12, 5)).astype(np.float32)
    fn = window_partition if mode == "block" else grid_partition
    ref = fn(torch.from_numpy(x), [p, p]).numpy()            # (B * rows * cols, p, p, C)
    got = np.asarray(Partition(p, mode)(x))
    assert got.shape == (2, 2, 4, p * p, 5)
    np.testing.assert_array_equal(got.reshape(ref.shape), ref)
    np.testing.assert_array_equal(np.asarray(Unpartition(p, mode)(got)), x)


def test_other_input_sizes_are_refused():
    """Neither source pads: a map that is not a multiple of the window is refused when the
    model is built, naming the partition; a conversion at another size is refused up front."""
    assert_other_sizes_refused(TIMM, r"maxvit\.yaml", "not a multiple of the partition size 7")


# ------------------------------------------------------------------ small real models

def _small_timm(seed=0, **cfg):
    from timm.models.maxxvit import MaxxVit, model_cfgs

    from zoo.catalog import get_variant
    from zoo.conversion.sources import calibrate_norms_, perturb_

    c = dataclasses.replace(model_cfgs["maxvit_tiny_tf"], embed_dim=SMALL["dims"],
                            depths=SMALL["depths"], stem_width=SMALL["stem_width"],
                            head_hidden_size=SMALL["dims"][-1], **cfg)
    torch.manual_seed(seed)
    module = MaxxVit(c, img_size=SIZE, num_classes=10).eval()
    variant, _ = get_variant(TIMM)
    perturb_(module, ignore=variant.recipe.ignore)   # as zoo.convert does
    calibrate_norms_(module, SIZE, default_inputs())   # the recipe's input is fixed at 224
    return module


def _mapped_keras(name, module, **overrides):
    from zoo.conversion.mapping import apply_plan

    model = build(name, **{**SMALL, "window": WINDOW, "classes": 10, **overrides})
    apply_plan(model, plan_for(name, module, model))
    return model


def _stages(module, x, modules):
    captured = {}
    hooks = [module.get_submodule(m).register_forward_hook(
        lambda _m, _i, out, m=m: captured.__setitem__(m, out.permute(0, 2, 3, 1).numpy()))
        for m in modules]
    try:
        with torch.no_grad():
            logits = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    finally:
        for h in hooks:
            h.remove()
    return logits, [captured[m] for m in modules]


TIMM_STAGES = ["stem", "stages.0", "stages.1", "stages.2", "stages.3"]
KERAS_STAGES = ["stem", "stage1", "stage2", "stage3", "stage4"]


@pytest.fixture(scope="module")
def small_timm():
    module = _small_timm()
    return module, _mapped_keras(TIMM, module)


def test_small_timm_maxvit_with_the_recipe_rules(small_timm):
    """A 5-block timm MaxxVit with the maxvit_tiny_tf config at 64 px (partition 2) mapped by
    the recipe: logits and every feature stage, same top-1; every tensor consumed."""
    module, model = small_timm
    x = random_input(SIZE, SIZE, seed=9)
    ref, stages = _stages(module, x, TIMM_STAGES)
    logits, *feats = eager(model, x, KERAS_STAGES)
    assert rel(logits, ref) < TOL
    assert (logits.argmax(1) == ref.argmax(1)).all()
    for name, got, want in zip(KERAS_STAGES, feats, stages):
        assert rel(got, want) < TOL, name


def test_features_and_keras_file(small_timm, tmp_path):
    """What tests/test_catalogue.py checks, on the small model: the last feature stage (where
    include_top=False ends: the body's output) is timm's forward_features; features_only gives
    stem + 4 stages with timm's feature_info channels and reductions, and their maps; the
    `.keras` file reloads in safe mode to the same function; the SavedModel's serving signature
    gives timm's logits."""
    from zoo.models import feature_info

    module, model = small_timm
    x = random_input(SIZE, SIZE, seed=14)
    feats = copy_weights(model, build(TIMM, **SMALL, window=WINDOW, features_only=True))
    assert [(i["name"], i["channels"], i["reduction"]) for i in feature_info(feats)] == [
        (k, t["num_chs"], t["reduction"]) for k, t in zip(KERAS_STAGES, module.feature_info)]
    _, stages = _stages(module, x, TIMM_STAGES)
    got = eager(feats, x)
    for name, g, want in zip(KERAS_STAGES, got, stages):
        assert rel(g, want) < TOL, name
    with torch.no_grad():
        want = module.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    assert rel(got[-1], want.permute(0, 2, 3, 1).numpy()) < TOL

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(eager(loaded, x)[0], eager(model, x)[0])
    assert_saved_model_reproduces(model, x, torch_nhwc(module, x), tmp_path, TOL)


def test_pitfall_tanh_gelu_and_tf_same_padding(small_timm):
    """The _tf_ weights use the tanh GELU and TF "SAME" padding. The exact GELU moves this
    model's logits by ~3e-4 relative (over the tolerance, though close: ~1e-6 with the right
    one); torch's symmetric padding shifts the strided stem and depthwise convs by a pixel."""
    module, model = small_timm
    x = random_input(SIZE, SIZE, seed=10)
    ref, _ = _stages(module, x, [])
    right = rel(eager(model, x)[0], ref)
    assert right < TOL
    gelus = [layer for layer in model.layers if isinstance(layer, GELU)]
    assert len(gelus) == 1 + 5 * 2 + 5 * 2 and all(g.approximate for g in gelus)
    try:
        for g in gelus:
            g.approximate = False
        exact = rel(eager(model, x)[0], ref)
    finally:
        for g in gelus:
            g.approximate = True
    assert exact > TOL and exact > 30 * right, (exact, right)
    symmetric = _mapped_keras(TIMM, module, tf_padding=False)
    assert rel(eager(symmetric, x)[0], ref) > 1e-2


def test_pitfall_derived_lookups_must_keep_their_values(small_timm):
    """timm's one-hot lookups are derived (non-persistent) buffers: perturbing them, as
    validation perturbs every buffer the recipe does not ignore, changes timm's own function,
    which no Keras model can then match (the bias would be a blend of table cells). The recipe
    ignores them. (The tables start at std 0.02, so the damage is small but 10x the tolerance:
    ~2e-3 here.)"""
    from zoo.conversion.sources import perturb_

    module, _model = small_timm
    other = copy.deepcopy(module)
    lookups = [n for n, _ in other.named_buffers() if n.endswith("_lookup")]
    assert len(lookups) == 2 * 2 * sum(SMALL["depths"])   # block + grid, height + width
    perturb_(other, ignore=[re.compile(r"(?!.*_lookup$).*")])   # the lookups only
    x = random_input(SIZE, SIZE, seed=11)
    assert rel(_stages(other, x, [])[0], _stages(module, x, [])[0]) > 10 * TOL


TV = "torchvision/maxvit_t"
TV_SMALL = dict(depths=(1, 2), dims=(32, 64), stem_width=16)


@pytest.fixture(scope="module")
def small_torchvision():
    from torchvision.models.maxvit import MaxVit

    from zoo.conversion.sources import calibrate_norms_, perturb_

    torch.manual_seed(0)
    module = MaxVit(input_size=(SIZE, SIZE), stem_channels=16, partition_size=WINDOW,
                    block_channels=[32, 64], block_layers=[1, 2], head_dim=32,
                    stochastic_depth_prob=0.0, num_classes=10).eval()
    perturb_(module)   # relative_position_index is an integer buffer: never perturbed
    calibrate_norms_(module, SIZE, default_inputs())
    return module, _mapped_keras(TV, module, **TV_SMALL)


def test_small_torchvision_maxvit_with_the_recipe_rules(small_torchvision):
    """torchvision's maxvit_t runs at its built size only (224; 31M parameters): a 2-block
    torchvision MaxVit at 64 px (partition 2) mapped by the same recipe's torchvision rules
    (stem.0/1, MBconv.proj.1, conv_a/b/c, to_qkv, merge, the ((2p-1)^2, heads) table,
    mlp_layer.1/3, classifier.2/3/5) equals it, logits and every block."""
    module, model = small_torchvision
    x = random_input(SIZE, SIZE, seed=12)
    ref, stages = _stages(module, x, ["stem", "blocks.0", "blocks.1"])
    logits, *feats = eager(model, x, ["stem", "stage1", "stage2"])
    assert rel(logits, ref) < TOL
    for got, want in zip(feats, stages):
        assert rel(got, want) < TOL


def test_pitfall_torchvision_batchnorm_momentum_and_strided_shortcut(small_torchvision):
    """torchvision's BNs use momentum 0.01 (timm's 0.1; Keras wants 1 - momentum), which only
    fine-tuning would notice: the engine refuses the timm value, naming every BN. Its strided
    shortcut average-pools 3x3 with padding 1 (counted), not timm's 2x2: another function."""
    import zoo

    module, _model = small_torchvision
    with pytest.raises(zoo.MappingError) as e:
        plan_for(TV, module, build(TV, **{**TV_SMALL, "window": WINDOW, "classes": 10,
                                          "bn_momentum": 0.1}))
    bns = [n for n, m in module.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert f"{len(bns)} problem(s)" in str(e.value) and "momentum" in str(e.value)
    assert "'stem.0.1' -> keras layer 'stem_norm1'" in str(e.value)
    x = random_input(SIZE, SIZE, seed=15)
    ref, _ = _stages(module, x, [])
    avg2 = _mapped_keras(TV, module, **TV_SMALL, shortcut_pool=2)
    assert rel(eager(avg2, x)[0], ref) > 1e-2


# ------------------------------------------------------------------ serialisation

def test_layers_round_trip_through_a_keras_file(tmp_path):
    inp = keras.Input((None, None, DIM))
    x = Partition(2, "grid", name="partition")(inp)
    x = PartitionAttention(HEADS, 2, "swin", scale=0.125, name="attn")(
        keras.layers.Dense(3 * DIM)(x))
    x = GELU(approximate=True, name="act")(Unpartition(2, "grid", name="unpartition")(x))
    model = keras.Model(inp, x)
    rng = np.random.default_rng(13)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
    x = rng.standard_normal((2, 4, 6, DIM)).astype(np.float32)
    path = tmp_path / "layers.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded(x), model(x))
    attn = loaded.get_layer("attn")
    assert (attn.layout, attn.scale, attn.window) == ("swin", 0.125, (2, 2))
    assert loaded.get_layer("act").approximate
    assert [v.path for v in attn.weights] == ["attn/relative_position_bias_table"]
