"""Swin / Swin V2 family (recipes/swin.yaml, zoo/models/swin.py:swin,
zoo/layers/window_attention.py): the rebuilt derived buffers against the sources' buffers, the
shifted-window attention against timm's and torchvision's modules on their own (shifts, padding,
masks), small real timm/torchvision Swin models through the recipe's rules, and one test per
pitfall of the family. The catalogue variants at small, odd and default sizes, include_top=False,
features_only and the .keras round trip are tested in tests/test_catalogue.py."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import math

import keras
import numpy as np
import pytest
import torch

from helpers import assign_leaves, build, perturbed_params, plan_for, random_input, rel
from zoo.conversion.mapping import apply_plan
from zoo.layers.window_attention import (
    KeyBiasFreeDense,
    PatchMerging2x2,
    WindowAttention,
    WindowMerge,
    WindowPartition,
    relative_coords_table,
    relative_position_index,
)

TOL = 1e-5   # one attention or one small model in float32: rounding only
DIM, HEADS = 16, 2


def _keras_attention(window, shift, order, v2=False, dense=keras.layers.Dense):
    """NHWC map -> the builder's attention chain, as a model, and its three weighted layers."""
    inp = keras.Input((None, None, DIM))
    y = WindowPartition(window, shift, order)(inp)
    qkv = dense(3 * DIM)
    attn = WindowAttention(HEADS, window, shift, order, cosine=v2)
    proj = keras.layers.Dense(DIM)
    out = WindowMerge(window, shift, order)([proj(attn(qkv(y))), inp])
    return keras.Model(inp, out), qkv, attn, proj


def _map(x):
    return np.random.default_rng(1).standard_normal(x).astype(np.float32)


def _torch(fn, x):
    with torch.no_grad():
        return fn(torch.from_numpy(x)).numpy()


# ------------------------------------------------------------------ derived buffers

@pytest.mark.parametrize("window", [(7, 7), (8, 8), (3, 5)])
def test_relative_position_index_is_the_sources_buffer(window):
    """The index rebuilt in Keras = timm's get_relative_position_index (not in its state_dict)
    and torchvision's saved `relative_position_index` buffer (recipe `ignore`)."""
    from timm.models.swin_transformer import get_relative_position_index
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    ours = relative_position_index(window)
    np.testing.assert_array_equal(ours, get_relative_position_index(*window).numpy())
    tv = ShiftedWindowAttention(DIM, list(window), [0, 0], HEADS)
    np.testing.assert_array_equal(ours.reshape(-1), tv.relative_position_index.numpy())


@pytest.mark.parametrize("window, pretrained", [((8, 8), None), ((3, 5), None), ((8, 8), (12, 12))])
def test_relative_coords_table_is_the_sources_buffer(window, pretrained):
    """Swin V2's log-spaced coordinates = torchvision's saved buffer (normalised by its own
    window) and timm's (by the pretrained window when it has one)."""
    from timm.models.swin_transformer_v2 import WindowAttention as TimmV2Attention
    from torchvision.models.swin_transformer import ShiftedWindowAttentionV2

    ours = relative_coords_table(window, pretrained)
    timm_attn = TimmV2Attention(DIM, window, HEADS, pretrained_window_size=pretrained or (0, 0))
    np.testing.assert_allclose(ours, timm_attn.relative_coords_table[0].numpy(), atol=1e-6)
    if pretrained is None:
        tv = ShiftedWindowAttentionV2(DIM, list(window), [0, 0], HEADS)
        np.testing.assert_allclose(ours, tv.relative_coords_table[0].numpy(), atol=1e-6)


# ------------------------------------------------------------------ attention on its own

@pytest.mark.parametrize("size, shift", [((9, 11), 2), ((8, 8), 2), ((9, 11), 0), ((3, 10), 2)])
def test_window_attention_matches_timm(size, shift):
    """timm's SwinTransformerBlock attention branch (`_attn`: roll, pad, partition, fused qkv
    Linear, relative position bias, shift mask built for the padded map, proj, reverse) =
    WindowPartition -> Dense -> WindowAttention -> Dense -> WindowMerge, order roll_pad."""
    from timm.models.swin_transformer import SwinTransformerBlock

    block = perturbed_params(SwinTransformerBlock(DIM, input_resolution=(16, 16), num_heads=HEADS,
                                            window_size=4, shift_size=shift, dynamic_mask=True))
    model, qkv, attn, proj = _keras_attention(4, shift, "roll_pad")
    assign_leaves(qkv, dict(block.attn.qkv.named_parameters()))
    assign_leaves(proj, dict(block.attn.proj.named_parameters()))
    assign_leaves(attn, {"relative_position_bias_table": block.attn.relative_position_bias_table},
            "identity")
    x = _map((2, *size, DIM))
    assert rel(model(x), _torch(block._attn, x)) < TOL


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("size", [(9, 11), (8, 8), (3, 10)])
def test_window_attention_matches_torchvision(size, v2):
    """torchvision's ShiftedWindowAttention[V2] module (pad, then roll, the shift dropped along
    an axis of one window: (3, 10) pads to 4 x 12) = the same chain in order pad_roll; V2:
    cosine attention, clamped logit scale, position MLP `cpb_mlp` and the key bias zeroed."""
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

    cls = ShiftedWindowAttentionV2 if v2 else ShiftedWindowAttention
    tm = perturbed_params(cls(DIM, [4, 4], [2, 2], HEADS), seed=2)
    model, qkv, attn, proj = _keras_attention(4, 2, "pad_roll", v2,
                                              KeyBiasFreeDense if v2 else keras.layers.Dense)
    assign_leaves(qkv, dict(tm.qkv.named_parameters()))
    assign_leaves(proj, dict(tm.proj.named_parameters()))
    if v2:
        assign_leaves(attn, {"logit_scale": tm.logit_scale}, "identity")
        for i in (0, 2):
            assign_leaves(getattr(attn, f"cpb_mlp_{i}"), dict(tm.cpb_mlp[i].named_parameters()))
    else:
        assign_leaves(attn, {"relative_position_bias_table": tm.relative_position_bias_table},
                "identity")
    x = _map((2, *size, DIM))
    assert rel(model(x), _torch(tm, x)) < TOL


# ------------------------------------------------------------------ small real models

def _tiny_timm(v2=False):
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    return (SwinTransformerV2 if v2 else SwinTransformer)(
        img_size=32, patch_size=4, embed_dim=DIM, depths=(2, 2), num_heads=(2, 2), window_size=4,
        num_classes=10, dynamic_img_size=True)


def _tiny_torchvision(v2):
    from torchvision.models import swin_transformer as tv

    extra = dict(block=tv.SwinTransformerBlockV2, downsample_layer=tv.PatchMergingV2) if v2 else {}
    return tv.SwinTransformer(patch_size=[4, 4], embed_dim=DIM, depths=[2, 2], num_heads=[2, 2],
                              window_size=[4, 4], num_classes=10, **extra)


@pytest.mark.parametrize("name, make, stages, size", [
    ("timm/swin_tiny_patch4_window7_224", _tiny_timm, ("layers.0", "layers.1"), (40, 48)),
    ("timm/swinv2_tiny_window8_256", lambda: _tiny_timm(True), ("layers.0", "layers.1"), (40, 48)),
    ("torchvision/swin_t", lambda: _tiny_torchvision(False), ("features.1", "features.3"), (37, 45)),
    ("torchvision/swin_v2_t", lambda: _tiny_torchvision(True), ("features.1", "features.3"),
     (37, 45)),
])
def test_small_model_with_the_recipe_rules(name, make, stages, size):
    """A 2-stage Swin of each source, mapped by the catalogue variant's rules (every torch
    tensor mapped or ignored, every Keras variable assigned), equals it: logits and both stage
    maps (NHWC on both sides), on a map that needs padding and odd merging. timm's stage 2 grid
    (4 at img_size 32) fits one window: timm drops its shift when the model is built. V2: timm's
    separate q_bias / v_bias (its zero key bias a buffer), torchvision's fused bias."""
    module = perturbed_params(make(), seed=3)
    model = build(name, depths=[2, 2], heads=[2, 2], dim=DIM, window=4, img_size=32, classes=10)
    plan = plan_for(name, module, model)
    apply_plan(model, plan)
    captured = {}
    for i, path in enumerate(stages, start=1):
        module.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, i=i: captured.__setitem__(f"stage{i}", out.numpy()))
    x = random_input(*size, seed=4)
    ref = _torch(module, x.transpose(0, 3, 1, 2).copy())
    probe = keras.Model(model.input, [model.output, model.get_layer("stage1").output,
                                      model.get_layer("stage2").output])
    logits, *maps = probe(x)
    assert rel(logits, ref) < TOL
    for i, got in enumerate(maps, start=1):
        assert rel(got, captured[f"stage{i}"]) < TOL


# ------------------------------------------------------------------ pitfalls

def test_pitfall_shift_then_pad_or_pad_then_shift():
    """On a map that is not a multiple of the window the two sources compute different
    functions with the same weights: timm rolls then pads, torchvision pads then rolls. Each
    order matches its own source and is > 1e-2 off the other."""
    from timm.models.swin_transformer import SwinTransformerBlock

    block = perturbed_params(SwinTransformerBlock(DIM, input_resolution=(16, 16), num_heads=HEADS,
                                            window_size=4, shift_size=2, dynamic_mask=True), 5)
    x = _map((2, 9, 11, DIM))
    ref = _torch(block._attn, x)
    got = {}
    for order in ("roll_pad", "pad_roll"):
        model, qkv, attn, proj = _keras_attention(4, 2, order)
        assign_leaves(qkv, dict(block.attn.qkv.named_parameters()))
        assign_leaves(proj, dict(block.attn.proj.named_parameters()))
        assign_leaves(attn, {"relative_position_bias_table": block.attn.relative_position_bias_table},
                "identity")
        got[order] = np.asarray(model(x))
    assert rel(got["roll_pad"], ref) < TOL
    assert rel(got["pad_roll"], ref) > 1e-2


def test_pitfall_patch_merging_2x2_order():
    """timm's reshape/permute and torchvision's cat([x0, x1, x2, x3]) both concatenate the 2x2
    neighbours (row, col) = (0, 0), (1, 0), (0, 1), (1, 1) (odd maps padded); PatchMerging2x2
    does too. The row-major order (0, 0), (0, 1), (1, 0), (1, 1) -- reshape(B, h, 2, w, 2, C)
    transposed without swapping the offsets -- has the same shape and is another function."""
    from timm.models.swin_transformer import PatchMerging
    from torchvision.models.swin_transformer import _patch_merging_pad

    x = _map((2, 7, 9, 3))
    got = np.asarray(PatchMerging2x2()(x))
    np.testing.assert_array_equal(got, _torch(_patch_merging_pad, x))
    timm_merge = PatchMerging(3)
    timm_merge.norm, timm_merge.reduction = torch.nn.Identity(), torch.nn.Identity()
    np.testing.assert_array_equal(got, _torch(timm_merge, x))
    padded = np.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
    row_major = padded.reshape(2, 4, 2, 5, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, 5, 12)
    assert got.shape == row_major.shape and not np.allclose(got, row_major)


def test_pitfall_v2_key_bias_is_zeroed_in_every_forward():
    """torchvision's Swin V2 stores a full q|k|v bias but zeroes the key third in forward: a
    plain Dense with the stored bias is off (cosine attention normalises k + b_k), the
    KeyBiasFreeDense the builder uses is not."""
    from torchvision.models.swin_transformer import ShiftedWindowAttentionV2

    tm = perturbed_params(ShiftedWindowAttentionV2(DIM, [4, 4], [2, 2], HEADS), seed=6)
    assert float(tm.qkv.bias.detach()[DIM:2 * DIM].abs().max()) > 0.1   # stored, non-zero
    x = _map((2, 8, 8, DIM))
    ref = _torch(tm, x)
    errors = {}
    for dense in (KeyBiasFreeDense, keras.layers.Dense):
        model, qkv, attn, proj = _keras_attention(4, 2, "pad_roll", True, dense)
        assign_leaves(qkv, dict(tm.qkv.named_parameters()))
        assign_leaves(proj, dict(tm.proj.named_parameters()))
        assign_leaves(attn, {"logit_scale": tm.logit_scale}, "identity")
        for i in (0, 2):
            assign_leaves(getattr(attn, f"cpb_mlp_{i}"), dict(tm.cpb_mlp[i].named_parameters()))
        errors[dense.__name__] = rel(model(x), ref)
    assert errors["KeyBiasFreeDense"] < TOL
    assert errors["Dense"] > 1e-2, errors


def test_pitfall_v2_logit_scale_is_clamped_at_log_100():
    """exp(min(logit_scale, log 100)): a head whose learned log-scale exceeds log(100) acts as
    log(100) in torch; the Keras layer clamps likewise (unclamped, the logits would be 10x)."""
    from torchvision.models.swin_transformer import ShiftedWindowAttentionV2

    tm = perturbed_params(ShiftedWindowAttentionV2(DIM, [4, 4], [0, 0], HEADS), seed=7)
    model, qkv, attn, proj = _keras_attention(4, 0, "pad_roll", True, KeyBiasFreeDense)
    assign_leaves(qkv, dict(tm.qkv.named_parameters()))
    assign_leaves(proj, dict(tm.proj.named_parameters()))
    for i in (0, 2):
        assign_leaves(getattr(attn, f"cpb_mlp_{i}"), dict(tm.cpb_mlp[i].named_parameters()))
    x = _map((2, 8, 8, DIM))
    out = {}
    for log_scale in (math.log(1000.0), math.log(100.0), math.log(20.0)):
        with torch.no_grad():
            tm.logit_scale.fill_(log_scale)
        attn.logit_scale.assign(np.full((HEADS, 1, 1), log_scale, np.float32))
        out[log_scale] = np.asarray(model(x))
        assert rel(out[log_scale], _torch(tm, x)) < TOL
    assert rel(out[math.log(1000.0)], out[math.log(100.0)]) < 1e-6
    assert rel(out[math.log(20.0)], out[math.log(100.0)]) > 1e-2


def test_layers_round_trip_through_a_keras_file(tmp_path):
    """The window layers (V2 with its position-MLP sublayers, the key-bias-free Dense) reload
    from a .keras file in safe mode to the same function."""
    inp = keras.Input((None, None, DIM))
    y = WindowPartition(4, 2, "pad_roll")(inp)
    y = WindowAttention(HEADS, 4, 2, "pad_roll", cosine=True, name="attn")(
        KeyBiasFreeDense(3 * DIM)(y))
    y = PatchMerging2x2()(WindowMerge(4, 2, "pad_roll")([y, inp]))
    model = keras.Model(inp, y)
    rng = np.random.default_rng(8)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
    x = _map((2, 9, 7, DIM))
    path = tmp_path / "window.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded(x), model(x))
    assert sorted(v.path for v in loaded.get_layer("attn").weights) == [
        "attn/cpb_mlp_0/bias", "attn/cpb_mlp_0/kernel", "attn/cpb_mlp_2/kernel",
        "attn/logit_scale"]


def test_feature_layout_is_checked(tmp_path):
    """`feature_layout` takes one of the layouts and nothing else (a typo would otherwise fall
    back to NCHW and transpose Swin's NHWC stages)."""
    import yaml

    import zoo
    from helpers import ROOT
    from zoo.recipe import load_recipe

    data = yaml.safe_load((ROOT / "recipes" / "swin.yaml").read_text())
    assert load_recipe(ROOT / "recipes" / "swin.yaml").feature_layout == "tensor"
    data["feature_layout"] = "nhwc"
    path = tmp_path / "swin.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(zoo.RecipeError, match="feature_layout: expected one of"):
        load_recipe(path)


def test_perturbation_leaves_the_derived_tensors_the_recipe_ignores():
    """Validation perturbs every float tensor except those the recipe ignores: torchvision V2's
    saved coordinate table and timm V2's zero key-bias buffer keep the values the source
    derives (perturbed, torch would run another architecture than the Keras rebuild)."""
    from timm.models.swin_transformer_v2 import WindowAttention as TimmV2Attention
    from torchvision.models.swin_transformer import ShiftedWindowAttentionV2

    from helpers import ROOT
    from zoo.conversion.sources import perturb_
    from zoo.recipe import load_recipe

    ignore = load_recipe(ROOT / "recipes" / "swin.yaml").ignore
    tv, tm = ShiftedWindowAttentionV2(DIM, [4, 4], [0, 0], HEADS), TimmV2Attention(DIM, (4, 4), HEADS)
    for module in (tv, tm):
        # named as in a model (`<block>.attn.<tensor>`), which the recipe's patterns expect
        wrapped = torch.nn.ModuleDict({"block": torch.nn.ModuleDict({"attn": module})})
        before = {k: v.clone() for k, v in [*wrapped.named_parameters(), *wrapped.named_buffers()]}
        perturb_(wrapped, ignore=ignore)
        after = dict(wrapped.named_buffers())
        for name in ("block.attn.relative_coords_table", "block.attn.k_bias"):
            if name in after:
                assert torch.equal(after[name], before[name]), name
        assert not torch.equal(module.logit_scale, before["block.attn.logit_scale"])
    assert not tm.k_bias.any()
    np.testing.assert_allclose(tv.relative_coords_table[0].numpy(), relative_coords_table(4),
                               atol=1e-6)
