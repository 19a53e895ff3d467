"""MobileViT family (recipes/mobilevit.yaml, zoo/models/mobilevit.py): the unfold/fold layers
against the tensors timm's MobileVitBlock feeds its transformer and gets back, one MobileViT block
against timm's (mapped by the recipe's own rules), the dynamic-size path, and the pitfalls.
Whole-model parity at small and odd non-square sizes (where stage 4's 5 x 6 map is resized to
whole patches), `.keras` round trip, include_top=False and features_only are tested for every
configuration in tests/test_catalogue.py."""
import zoo.conversion.torch_first  # noqa: F401  (torch, timm before keras)

# isort: split

import keras
import numpy as np
import pytest
import torch
from keras import ops
from torch import nn

from helpers import rel
from zoo.catalog import get_variant
from zoo.conversion.mapping import apply_plan, plan_mapping
from zoo.conversion.sources import perturb_
from zoo.layers.patches import PatchFold, PatchUnfold
from zoo.models.mobilevit import mobilevit_block

WIDTH, DIM, DEPTH, PATCH = 16, 24, 2, 2
PREFIX = "stage3_block1"   # the Keras name of timm's stages.2.1, as the recipe maps it


def _timm_block(seed=0):
    """timm's MobileVitBlock with the layer functions of timm's mobilevit_xxs configuration
    (ConvNormAct with SiLU), small, every parameter and buffer perturbed."""
    from timm.models.byobnet import get_layer_fns
    from timm.models.mobilevit import MobileVitBlock, model_cfgs

    block = MobileVitBlock(WIDTH, WIDTH, transformer_dim=DIM, transformer_depth=DEPTH,
                           patch_size=PATCH, layers=get_layer_fns(model_cfgs["mobilevit_xxs"]))
    perturb_(block, seed=seed)
    return block.eval()


def _captured(block, x):
    """What timm's block computes around its transformer, for an NCHW tensor x: the map before
    the unfold (conv_1x1's output), the unfolded sequences (the transformer's input), the
    normalised sequences (norm's output) and the folded map (conv_proj's input)."""
    seen = {}
    hooks = [block.conv_1x1.register_forward_hook(lambda _m, _i, o: seen.setdefault("map", o)),
             block.transformer.register_forward_pre_hook(lambda _m, a: seen.setdefault("seq", a[0])),
             block.norm.register_forward_hook(lambda _m, _i, o: seen.setdefault("normed", o)),
             block.conv_proj.register_forward_pre_hook(lambda _m, a: seen.setdefault("folded", a[0]))]
    with torch.no_grad():
        out = block(x)
    for h in hooks:
        h.remove()
    return {k: v.numpy() for k, v in seen.items()}, out.numpy()


def _nchw(seed, h, w, c=WIDTH):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(
        (2, c, h, w)).astype(np.float32))


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("h, w", [(8, 6), (5, 6), (7, 3)])
def test_unfold_and_fold_match_timm(h, w):
    """PatchUnfold gives timm's transformer input element for element -- (B * 4, N, C), batch
    major, pixel-in-patch next, patches row-major -- and PatchFold timm's folded map, also where
    the map is not whole patches (5 x 6, 7 x 3: resized bilinearly to 6 x 6 / 8 x 4 and back)."""
    seen, _ = _captured(_timm_block(), _nchw(1, h, w))
    seq = np.asarray(PatchUnfold(PATCH)(_nhwc(seen["map"])))
    assert seq.shape == seen["seq"].shape
    assert rel(seq, seen["seq"]) < 1e-6
    folded = np.asarray(PatchFold(PATCH)([seen["normed"], _nhwc(seen["map"])]))
    assert rel(folded, _nhwc(seen["folded"])) < 1e-6


def _keras_block():
    inp = keras.Input((None, None, WIDTH))
    return keras.Model(inp, mobilevit_block(inp, DIM, DEPTH, PATCH, name=PREFIX))


def _mapped_block(seed=0):
    """(timm block, Keras block) with the weights mapped by recipes/mobilevit.yaml's rules: the
    timm block sits at `stages.2.1`, its path in mobilevit_xxs."""
    block = _timm_block(seed)
    net = nn.Module()
    net.stages = nn.Sequential(nn.Identity(), nn.Identity(), nn.Sequential(nn.Identity(), block))
    variant, _ = get_variant("timm/mobilevit_xxs")
    model = _keras_block()
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    plan = plan_mapping(state, model, variant.rules, variant.recipe.ignore,
                        modules=dict(net.named_modules()), context="mobilevit block")
    apply_plan(model, plan)
    return block, model


@pytest.mark.parametrize("h, w", [(8, 8), (5, 6)])
def test_mobilevit_block_matches_timm(h, w):
    """One MobileViT block (local 3x3 + 1x1 convs, unfold, two pre-norm transformer blocks with
    the fused qkv attention and a SiLU MLP, LayerNorm eps 1e-5, fold, projection, concat,
    fusion) equals timm's MobileVitBlock."""
    block, model = _mapped_block()
    x = _nchw(2, h, w)
    _, ref = _captured(block, x)
    assert rel(model(_nhwc(x.numpy())), _nhwc(ref)) < 1e-5


def test_dynamic_input_size_resizes_in_the_graph():
    """Traced with free spatial axes (as a SavedModel is), the sizes are unknown when the graph
    is built: the resize is in the graph and is the identity on whole patches, so one trace
    serves both kinds of size."""
    import tensorflow as tf

    block, model = _mapped_block(seed=3)
    fn = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, WIDTH))])
    for h, w in ((8, 8), (5, 6)):
        x = _nchw(4, h, w)
        _, ref = _captured(block, x)
        assert rel(fn(_nhwc(x.numpy())), _nhwc(ref)) < 1e-5


class _WithinPatchUnfold(PatchUnfold):
    """The same elements grouped the other way: one sequence of 4 pixels per patch."""

    def call(self, x):
        seq = super().call(x)                                   # (B * 4, N, C)
        dim = seq.shape[-1]
        seq = ops.reshape(seq, (ops.shape(x)[0], PATCH * PATCH, -1, dim))
        return ops.reshape(ops.transpose(seq, (0, 2, 1, 3)), (-1, PATCH * PATCH, dim))


class _WithinPatchFold(PatchFold):
    def call(self, inputs):
        seq, ref = inputs                                       # (B * N, 4, C)
        dim = seq.shape[-1]
        seq = ops.reshape(seq, (ops.shape(ref)[0], -1, PATCH * PATCH, dim))
        seq = ops.transpose(seq, (0, 2, 1, 3))                  # (B, 4, N, C)
        return super().call([ops.reshape(seq, (-1, ops.shape(seq)[2], dim)), ref])


def _rebuilt(model):
    """The Keras block built again (with whatever the test monkeypatched) and model's weights."""
    again = _keras_block()
    again.set_weights(model.get_weights())
    return again


def test_pitfall_attention_runs_across_patches_not_within(monkeypatch):
    """timm's transformer attends between the same pixel of different patches (sequences of N
    patches, one per pixel position). Reading each 2 x 2 patch as the sequence -- ViT's habit
    of one token per patch, (B * N, 4, C) -- runs with the same weights and is another
    function. (Without position embeddings attention is permutation-equivariant, so the order
    *within* the sequences only matters when intermediate tensors are compared with torch's:
    the layers keep timm's order exactly for that.)"""
    import zoo.models.mobilevit as mv

    block, model = _mapped_block(seed=5)
    x = _nchw(6, 8, 8)
    _, ref = _captured(block, x)
    assert rel(model(_nhwc(x.numpy())), _nhwc(ref)) < 1e-5
    monkeypatch.setattr(mv, "PatchUnfold", _WithinPatchUnfold)
    monkeypatch.setattr(mv, "PatchFold", _WithinPatchFold)
    wrong = _rebuilt(model)
    assert isinstance(wrong.get_layer(f"{PREFIX}_unfold"), _WithinPatchUnfold)
    assert rel(wrong(_nhwc(x.numpy())), _nhwc(ref)) > 1e-2


def test_pitfall_mlp_activation_is_silu(monkeypatch):
    """timm passes the network's activation (SiLU) to the transformer MLPs; the ViT default
    (GELU) builds the same weights and gives another model."""
    import zoo.models.mobilevit as mv

    block, model = _mapped_block(seed=7)
    x = _nchw(8, 8, 8)
    _, ref = _captured(block, x)
    assert rel(model(_nhwc(x.numpy())), _nhwc(ref)) < 1e-5
    vit_default = mv.transformer_block
    monkeypatch.setattr(mv, "transformer_block",
                        lambda *a, **k: vit_default(*a, **{**k, "act": "gelu"}))
    assert rel(_rebuilt(model)(_nhwc(x.numpy())), _nhwc(ref)) > 1e-2
