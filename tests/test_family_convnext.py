"""ConvNeXt / ConvNeXt V2 family (recipes/convnext.yaml, zoo/models/convnext.py:convnext): the
two layers with no Keras twin (GlobalResponseNorm, LayerScale) against torch, and one test per
pitfall of the family.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision, timm before keras)

# isort: split

import functools

import keras
import numpy as np
import pytest
import torch

from helpers import (
    assert_init_hides_swapped_blocks,
    assert_layernorm_eps_refused,
    random_input,
    rel,
    torch_nhwc,
)
from zoo.layers.gelu import exact_gelu
from zoo.layers.grn import GlobalResponseNorm
from zoo.layers.layer_scale import LayerScale

TOL = 1e-4


# ------------------------------------------------------------------ layers

@pytest.mark.parametrize("channels_last", [True, False])
def test_global_response_norm_matches_timm(channels_last):
    from timm.layers.grn import GlobalResponseNorm as TimmGRN

    rng = np.random.default_rng(0)
    c = 24
    ref_layer = TimmGRN(c, eps=1e-6, channels_last=channels_last)
    with torch.no_grad():   # zero at init (identity): give it real weights
        ref_layer.weight.copy_(torch.from_numpy(rng.standard_normal(c).astype(np.float32)))
        ref_layer.bias.copy_(torch.from_numpy(rng.standard_normal(c).astype(np.float32)))
    x = rng.standard_normal((2, 9, 13, c)).astype(np.float32) * 3
    with torch.no_grad():
        t = torch.from_numpy(x if channels_last else x.transpose(0, 3, 1, 2).copy())
        ref = ref_layer(t).numpy()
    ref = ref if channels_last else ref.transpose(0, 2, 3, 1)
    layer = GlobalResponseNorm(epsilon=1e-6)
    layer.build(x.shape)
    layer.set_weights([ref_layer.weight.detach().numpy(), ref_layer.bias.detach().numpy()])
    assert [v.path.split("/")[-1] for v in layer.weights] == ["weight", "bias"]   # identity map
    np.testing.assert_allclose(np.asarray(layer(x)), ref, rtol=1e-5, atol=1e-5)


def test_pitfall_global_response_norm_formula():
    """The GRN formulas seen in ports, against timm's. `x * (1 + gamma * Nx) + beta` is the
    same function (distributed); dropping the residual `x`, taking the mean instead of the L2
    norm over space, or normalising over space instead of channels are not."""
    from timm.layers.grn import GlobalResponseNorm as TimmGRN

    rng = np.random.default_rng(1)
    c = 16
    g = rng.standard_normal(c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    ref_layer = TimmGRN(c)
    with torch.no_grad():
        ref_layer.weight.copy_(torch.from_numpy(g))
        ref_layer.bias.copy_(torch.from_numpy(b))
    x = rng.standard_normal((2, 7, 5, c)).astype(np.float32)
    with torch.no_grad():
        ref = ref_layer(torch.from_numpy(x)).numpy()

    l2 = np.sqrt((x ** 2).sum(axis=(1, 2), keepdims=True))
    nx = l2 / (l2.mean(axis=-1, keepdims=True) + 1e-6)
    assert rel(x * (1 + g * nx) + b, ref) < 1e-5                      # equivalent form
    wrong = {
        "no residual": g * (x * nx) + b,
        "spatial mean, not L2 norm": x + b + g * x * (
            np.abs(x).mean(axis=(1, 2), keepdims=True)
            / (np.abs(x).mean(axis=(1, 2), keepdims=True).mean(axis=-1, keepdims=True) + 1e-6)),
        "normalised over space, not channels": x + b + g * x * (
            l2 / (np.sqrt((x ** 2).mean(axis=-1, keepdims=True)) + 1e-6)),
    }
    for what, y in wrong.items():
        assert rel(y, ref) > 1e-2, what
    layer = GlobalResponseNorm()
    layer.build(x.shape)
    layer.set_weights([g, b])
    assert rel(layer(x), ref) < 1e-5


@pytest.mark.parametrize("layout, torch_shape", [("timm", (12,)), ("torchvision", (12, 1, 1))])
def test_layer_scale_matches_torch(layout, torch_shape):
    rng = np.random.default_rng(2)
    scale = rng.standard_normal(torch_shape).astype(np.float32)
    x = rng.standard_normal((2, 5, 7, 12)).astype(np.float32)
    # timm: x.mul(gamma.reshape(1, -1, 1, 1)); torchvision: layer_scale (C,1,1) * x, both NCHW
    nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    ref = (nchw * torch.from_numpy(scale).reshape(1, -1, 1, 1)).numpy().transpose(0, 2, 3, 1)
    layer = LayerScale(1e-6, layout=layout)
    layer.build(x.shape)
    (var,) = layer.weights
    assert tuple(var.shape) == torch_shape          # what the identity transform needs
    assert var.path.split("/")[-1] == {"timm": "gamma", "torchvision": "layer_scale"}[layout]
    np.testing.assert_allclose(np.asarray(var), np.full(torch_shape, 1e-6, np.float32))
    layer.set_weights([scale])
    np.testing.assert_allclose(np.asarray(layer(x)), ref, rtol=1e-6, atol=1e-6)


def test_layers_round_trip_through_a_keras_file(tmp_path):
    inp = keras.Input((None, None, 8))
    y = GlobalResponseNorm(epsilon=1e-5, name="grn")(inp)
    y = LayerScale(0.5, layout="timm", name="ls_timm")(y)
    y = LayerScale(0.25, layout="torchvision", name="ls_tv")(y)
    model = keras.Model(inp, y)
    rng = np.random.default_rng(3)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
    x = rng.standard_normal((2, 6, 5, 8)).astype(np.float32)
    path = tmp_path / "layers.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), model.predict_on_batch(x))
    assert loaded.get_layer("grn").epsilon == 1e-5
    assert loaded.get_layer("ls_tv").layout == "torchvision"
    assert loaded.get_layer("ls_timm").init_value == 0.5


# ------------------------------------------------------------------ pitfalls

def test_pitfall_exact_gelu(converted_small, torch_model):
    """nn.GELU / timm GELU are the exact (erf) form. The tanh approximation is close: at these
    perturbed weights it moves ConvNeXt's logits by ~2e-5 relative (V1 atto) -- 30x the exact
    model's error but under the family tolerance 1e-4 -- and ConvNeXt V2's by ~1.4e-4. So V1
    can only show it at a tight tolerance; exact GELU keeps both at float32 noise (< 2e-6)."""
    for name, min_err in [("timm/convnext_atto", 5e-6), ("timm/convnextv2_atto", TOL)]:
        model, _ = converted_small(name)
        x = random_input()
        ref = torch_nhwc(torch_model(name), x)
        exact = rel(model(x), ref)
        assert exact < 2e-6, (name, exact)
        # the GELU is fc1's own activation, fused into its matmul (zoo/layers/dense.py)
        fc1s = [layer for layer in model.layers if layer.name.endswith("_fc1")]
        assert len(fc1s) == 12
        try:
            for layer in fc1s:
                assert layer.activation is exact_gelu
                layer.activation = functools.partial(keras.activations.gelu, approximate=True)
            tanh = rel(model(x), ref)    # eager call: uses the swapped activations
        finally:
            for layer in fc1s:
                layer.activation = exact_gelu
        assert tanh > min_err and tanh > 10 * exact, (name, tanh, exact)


def test_pitfall_layernorm_eps():
    """ConvNeXt's LayerNorms use eps 1e-6 (Keras' default is 1e-3): the engine refuses a model
    with another eps, naming every LayerNorm, instead of producing a silently-off model."""
    # 17: stem, 3 downsamples, 12 blocks, head
    assert_layernorm_eps_refused("timm/convnext_atto", 1e-6, 1e-3,
                                 ("stem.1", "stem_norm"), ("head.norm", "head_norm"), 17)


def test_pitfall_layer_scale_init_hides_mapping_bugs(tmp_path, monkeypatch):
    """Layer scale starts at 1e-6: every residual branch is ~silent at init, so a wrong mapping
    inside the blocks (here stage 1's depthwise convs of blocks 0 and 1 swapped) is invisible
    with default weights. The pipeline perturbs every parameter (the scales too), and the same
    mistake then fails validation."""
    assert_init_hides_swapped_blocks(
        tmp_path, monkeypatch, "convnext", "convnext_atto",
        (r"stages\.0\.blocks\.{}\.conv_dw", "stage1_block{}_conv_dw", "depthwise"), TOL)


def test_pitfall_drop_path_is_identity_at_inference(converted_small, torch_model):
    """torchvision's stochastic depth (0.1) is kept for training as per-sample Dropout on the
    residual branches; inference must be deterministic and equal torch's eval()."""
    name = "torchvision/convnext_tiny"
    model, _ = converted_small(name)
    drop = [layer for layer in model.layers if layer.name.endswith("_drop_path")]
    assert len(drop) == 17 and max(layer.rate for layer in drop) == pytest.approx(0.1)
    x = random_input(n=4, seed=4)
    ref = torch_nhwc(torch_model(name), x)
    first = model.predict_on_batch(x)
    np.testing.assert_array_equal(first, model.predict_on_batch(x))
    assert rel(first, ref) < TOL
    assert rel(model(x, training=True), ref) > 1e-3
