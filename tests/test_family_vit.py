"""ViT / DeiT family (recipes/vit.yaml, zoo/models/vit.py:vit): the attention block against timm's
and torchvision's attention modules on their own, the position-embedding resampling against
timm's `resample_abs_pos_embed`, and one test per pitfall of the family.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import torch
from torch import nn

import zoo
from helpers import (
    assert_layernorm_eps_refused,
    assign_leaves,
    build,
    mapped,
    perturbed_params,
    plan_for,
    random_input,
    rel,
    torch_nhwc,
)
from zoo.layers.attention import FusedQKVAttention
from zoo.layers.tokens import SelectToken, TokenEmbedding, bicubic_matrix
from zoo.models.blocks_transformer import attention

TOL = 1e-4
DIM, HEADS, TOKENS = 48, 4, 11


def _keras_attention():
    inp = keras.Input((None, DIM))
    model = keras.Model(inp, attention(inp, HEADS, "attn"))
    return model, model.get_layer("attn_qkv"), model.get_layer("attn_proj")


def _tokens(seed=1):
    return np.random.default_rng(seed).standard_normal((2, TOKENS, DIM)).astype(np.float32)


# ------------------------------------------------------------------ attention

def test_attention_matches_timm():
    """timm's Attention (fused qkv Linear, head split (3, heads, head_dim)) = Dense -> attention
    -> Dense, the qkv and proj Linears mapped with `linear`."""
    from timm.models.vision_transformer import Attention

    tm = perturbed_params(Attention(DIM, num_heads=HEADS, qkv_bias=True))
    model, qkv, proj = _keras_attention()
    assign_leaves(qkv, dict(tm.qkv.named_parameters()), "linear")
    assign_leaves(proj, dict(tm.proj.named_parameters()), "linear")
    x = _tokens()
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    assert rel(model(x), ref) < 1e-5


def test_attention_matches_torchvision_multihead_attention():
    """torchvision's nn.MultiheadAttention (packed in_proj, `mha_in_proj`; out_proj `linear`)
    onto the very same Keras layers: both sources order q/k/v features alike."""
    tm = perturbed_params(nn.MultiheadAttention(DIM, HEADS, batch_first=True), seed=2)
    model, qkv, proj = _keras_attention()
    assign_leaves(qkv, {"in_proj_weight": tm.in_proj_weight, "in_proj_bias": tm.in_proj_bias},
            "mha_in_proj")
    assign_leaves(proj, dict(tm.out_proj.named_parameters()), "linear")
    x = _tokens(3)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        ref = tm(xt, xt, xt, need_weights=False)[0].numpy()
    assert rel(model(x), ref) < 1e-5


def test_pitfall_qkv_head_split_order():
    """The fused qkv features are (q|k|v, heads, head_dim). Splitting them (heads, q|k|v,
    head_dim) -- a natural reading of "per-head qkv" -- runs with the same shapes and is wrong."""
    from timm.models.vision_transformer import Attention

    tm = perturbed_params(Attention(DIM, num_heads=HEADS, qkv_bias=True), seed=4)
    model, qkv, proj = _keras_attention()
    assign_leaves(qkv, dict(tm.qkv.named_parameters()), "linear")
    assign_leaves(proj, dict(tm.proj.named_parameters()), "linear")
    x = _tokens(5)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    assert rel(model(x), ref) < 1e-5
    # the same weights read in the other order: permute the Dense's output features so that
    # FusedQKVAttention's (3, H, D) split sees what a (H, 3, D) split would
    hd = DIM // HEADS
    order = np.arange(3 * DIM).reshape(HEADS, 3, hd).transpose(1, 0, 2).reshape(-1)
    kernel, bias = (np.asarray(v) for v in qkv.weights)
    qkv.kernel.assign(kernel[:, order])
    qkv.bias.assign(bias[order])
    assert rel(model(x), ref) > 1e-2


def test_attention_scale_and_softmax_axis():
    """softmax(q k^T / sqrt(head_dim)) over the keys, by hand in NumPy from the fused input."""
    rng = np.random.default_rng(6)
    qkv = rng.standard_normal((2, 5, 3 * DIM)).astype(np.float32)
    hd = DIM // HEADS
    q, k, v = qkv.reshape(2, 5, 3, HEADS, hd).transpose(2, 0, 3, 1, 4)
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    want = (weights @ v).transpose(0, 2, 1, 3).reshape(2, 5, DIM)
    assert rel(FusedQKVAttention(HEADS)(qkv), want) < 1e-5


# ------------------------------------------------------------------ position embedding

@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("n_in, n_out", [(14, 24), (14, 14), (14, 5), (7, 16), (37, 16)])
def test_bicubic_matrix_is_torchs_interpolate(n_in, n_out, antialias):
    """Up, same, down (antialiased support widened by the scale), for both torch kernels."""
    import torch.nn.functional as F

    v = torch.from_numpy(np.random.default_rng(n_in * n_out).standard_normal(
        (1, 1, 1, n_in)).astype(np.float32))
    ref = F.interpolate(v, size=(1, n_out), mode="bicubic", align_corners=False,
                        antialias=antialias)[0, 0, 0].numpy()
    got = np.asarray(bicubic_matrix(n_in, n_out, antialias)) @ v[0, 0, 0].numpy()
    assert rel(got, ref) < 1e-5   # float32 rounding; the other kernel is > 1e-3 off


def _token_layer(grid, dim, **kwargs):
    layer = TokenEmbedding(grid, **kwargs)
    layer.build((None, None, None, dim))
    rng = np.random.default_rng(7)
    layer.set_weights([rng.standard_normal(tuple(w.shape)).astype(np.float32)
                       for w in layer.weights])
    return layer


@pytest.mark.parametrize("prefix, reg, embed_prefix, size", [
    (("cls",), 0, True, (24, 24)),          # a 224 checkpoint at 384
    (("cls", "dist"), 0, True, (10, 7)),    # DeiT distilled, smaller and non-square
    (("cls",), 4, False, (9, 12)),          # registers, no position for the prefix (DINOv2-reg)
    (("cls",), 0, True, (14, 14)),          # the trained grid: unchanged
])
def test_token_embedding_resamples_like_timm(prefix, reg, embed_prefix, size):
    """TokenEmbedding on a (h, w) patch grid = timm: prefix tokens, patches, and pos_embed
    resampled by timm's resample_abs_pos_embed (its defaults, as timm's dynamic_img_size
    forward calls it), added before or after the concatenation."""
    from timm.layers import resample_abs_pos_embed

    dim = 16
    layer = _token_layer((14, 14), dim, prefix=prefix, reg_tokens=reg, embed_prefix=embed_prefix)
    w = {v.path.rsplit("/", 1)[-1]: torch.from_numpy(np.asarray(v)) for v in layer.weights}
    n_prefix = len(prefix) + reg
    x = np.random.default_rng(8).standard_normal((2, *size, dim)).astype(np.float32)
    pos = resample_abs_pos_embed(w["pos_embed"], new_size=size, old_size=(14, 14),
                                 num_prefix_tokens=n_prefix if embed_prefix else 0)
    names = {"cls": "cls_token", "dist": "dist_token"}
    tokens = [w[names[k]] for k in prefix] + ([w["reg_token"]] if reg else [])
    patches = torch.from_numpy(x).reshape(2, -1, dim)
    tokens = [t.expand(2, -1, -1) for t in tokens]
    if embed_prefix:
        ref = torch.cat(tokens + [patches], dim=1) + pos
    else:
        ref = torch.cat(tokens + [patches + pos], dim=1)
    got = np.asarray(layer(x))
    assert got.shape == (2, n_prefix + size[0] * size[1], dim)
    assert rel(got, ref.numpy()) < 1e-5


def test_pitfall_pos_embed_resampling_kernel():
    """timm resamples with antialias=True (PIL's bicubic, a = -0.5) by default; plain torch
    bicubic (a = -0.75) or a resize that keeps the prefix positions in the grid differ."""
    from timm.layers import resample_abs_pos_embed

    pos = torch.from_numpy(np.random.default_rng(9).standard_normal((1, 197, 8)).astype(np.float32))
    ref = resample_abs_pos_embed(pos, new_size=(24, 24), num_prefix_tokens=1)
    plain = resample_abs_pos_embed(pos, new_size=(24, 24), num_prefix_tokens=1, antialias=False)
    assert rel(plain.numpy(), ref.numpy()) > 1e-2   # 9e-2 here
    layer = _token_layer((14, 14), 8)
    layer.pos.assign(pos.numpy())
    got = np.asarray(layer(np.zeros((1, 24, 24, 8), np.float32)))[:, 1:]
    cls = np.asarray(layer.tokens[0])
    assert rel(got, ref.numpy()[:, 1:]) < 1e-5
    assert rel(np.asarray(layer(np.zeros((1, 24, 24, 8), np.float32)))[:, :1] - cls,
               ref.numpy()[:, :1]) < 1e-6   # the class position is not resampled


def test_checkpoint_at_another_input_size_converts():
    """A 224 checkpoint converted at another size: validation runs timm (dynamic_img_size, its
    own resampling) against the Keras model (TokenEmbedding's resampling), logits and blocks."""
    _model, report = zoo.convert("timm/vit_tiny_patch16_224", input_size=96)
    parity = report["parity"]["in_memory"]
    assert report["input_size"] == 96 and parity["passed"]
    assert parity["max_rel"] < TOL
    assert set(parity["features"]) == {"block0", "block5", "block11"}


def test_checkpoint_fine_tuned_at_another_resolution_and_class_count(tmp_path):
    """A DeiT-tiny checkpoint fine-tuned at 96 px (a 6 x 6 position grid, not the recipe's 14 x 14)
    with 10 classes: both models are built for its grid (timm's img_size), the Keras model is
    validated at 96 by default, and it matches a timm model created at img_size=96 from the same
    file -- built here by timm itself, not by the code under test."""
    import timm

    from zoo.conversion.sources import perturb_

    src = timm.create_model("deit_tiny_patch16_224", img_size=96, num_classes=10)
    perturb_(src)
    ckpt = tmp_path / "finetuned.pth"
    torch.save(src.state_dict(), ckpt)
    model, report = zoo.convert("timm/deit_tiny_patch16_224", weights=str(ckpt), num_classes=10,
                                out_dir=tmp_path / "out")
    assert report["input_size"] == 96 and report["parity"]["in_memory"]["passed"]
    config = json.loads((Path(report["output_dir"]) / "config.json").read_text())
    assert config["builder_kwargs"]["img_size"] == 96 and config["num_classes"] == 10
    x = random_input(96, 96, seed=4)
    ref = torch_nhwc(src.eval(), x)
    assert ref.shape == (2, 10) and rel(model(x), ref) < TOL
    # the converted folder alone rebuilds it (config.json carries img_size)
    assert rel(zoo.create_model(report["output_dir"])(x), ref) < TOL


# ------------------------------------------------------------------ torchvision

def test_small_torchvision_vit_with_the_recipe_rules():
    """torchvision's ViT-B is 86M parameters and runs at 224 only (tests/test_catalogue.py
    cannot run it at its small sizes): a 2-block torchvision VisionTransformer mapped by the
    torchvision/vit_b_16 rules (class_token at the root, encoder.pos_embedding, packed in_proj,
    out_proj, mlp.0/3, ln_1/2, encoder.ln, heads.head) equals it, logits and both blocks."""
    from torchvision.models import VisionTransformer

    from zoo.conversion.mapping import apply_plan

    module = perturbed_params(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                          hidden_dim=32, mlp_dim=128, num_classes=10), seed=12)
    model = build("torchvision/vit_b_16", depth=2, dim=32, heads=2, patch=8, img_size=32,
                  classes=10)
    plan = plan_for("torchvision/vit_b_16", module, model)
    assert {a.torch_key for a in plan} == set(module.state_dict())
    apply_plan(model, plan)
    x = random_input(32, 32, seed=13)
    captured = {}
    for i in (0, 1):
        module.encoder.layers[i].register_forward_hook(
            lambda _m, _i, out, i=i: captured.__setitem__(f"block{i}", out.numpy()))
    ref = torch_nhwc(module, x)
    probe = keras.Model(model.input, [model.output, model.get_layer("block0").output,
                                      model.get_layer("block1").output])
    logits, *blocks = probe(x)
    assert rel(logits, ref) < 1e-5
    for i, got in enumerate(blocks):
        assert rel(got, captured[f"block{i}"]) < 1e-5


# ------------------------------------------------------------------ pitfalls

def test_pitfall_layernorm_eps():
    """ViT's LayerNorms use eps 1e-6 (torch's default 1e-5, Keras' 1e-3): the engine refuses a
    model with another eps, naming every LayerNorm (2 per block and the final one)."""
    assert_layernorm_eps_refused("timm/deit_tiny_patch16_224", 1e-6, 1e-5,
                                 ("blocks.0.norm1", "block0_norm1"), ("norm", "norm"), 25)


def test_pitfall_distilled_heads_are_averaged():
    """DeiT distilled returns (head(cls) + head_dist(dist)) / 2 in eval; the class-token head
    alone -- what a plain ViT port computes -- is another function."""
    module, model = mapped("timm/deit_tiny_distilled_patch16_224")
    x = random_input(48, 48, seed=10)
    ref = torch_nhwc(module, x)
    assert rel(model(x), ref) < TOL
    cls_only = keras.Model(model.input, model.get_layer("predictions").output)
    assert rel(cls_only(x), ref) > 1e-2


def test_layers_round_trip_through_a_keras_file(tmp_path):
    inp = keras.Input((None, None, DIM))
    x = TokenEmbedding((3, 3), prefix=("cls", "dist"), name="embed")(inp)
    x = FusedQKVAttention(HEADS, name="attn")(keras.layers.Dense(3 * DIM)(x))
    model = keras.Model(inp, SelectToken(1, name="pool")(x))
    rng = np.random.default_rng(11)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
    x = rng.standard_normal((2, 4, 5, DIM)).astype(np.float32)
    path = tmp_path / "layers.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded(x), model(x))
    assert loaded.get_layer("embed").prefix == ("cls", "dist")
    assert [v.path for v in loaded.get_layer("embed").weights] == [
        "embed/cls_token", "embed/dist_token", "embed/pos_embed"]


def test_fast_layers_convert_to_tflite_builtins():
    """zoo's GELU and attention (written for speed, docs/performance.md) stay expressible with
    TFLite's builtin ops alone: the converter recognises the erf-form GELU only as
    0.5 * x * (1 + erf(x / sqrt 2)); another arrangement leaves an Erf op, which TFLite's
    builtins lack and which failed the ViT and ConvNeXt exports. (Weightless layers only: the
    models' own TFLite exports, with LayerNorm, go through zoo.export in the catalogue tests.)"""
    import tensorflow as tf

    from zoo.layers.gelu import GELU

    inp = keras.Input((TOKENS, 3 * DIM))
    model = keras.Model(inp, GELU()(FusedQKVAttention(HEADS)(inp)))
    fn = tf.function(lambda t: model(t)).get_concrete_function(
        tf.TensorSpec((1, TOKENS, 3 * DIM), tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = tf.lite.Interpreter(model_content=converter.convert()).get_signature_runner()
    x = np.random.default_rng(12).standard_normal((1, TOKENS, 3 * DIM)).astype(np.float32)
    got = next(iter(runner(**{next(iter(runner.get_input_details())): x}).values()))
    assert rel(got, model(x)) < 1e-5
