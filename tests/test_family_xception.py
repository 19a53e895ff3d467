"""Xception family (recipes/xception.yaml, zoo/models/xception.py:xception): parity of timm's
aligned xception41, an odd non-square input, and one test per pitfall of the family."""
import numpy as np
import pytest
import torch

import zoo
from helpers import SMALL, parity_at
from zoo.catalog import get_variant
from zoo.conversion.sources import load_torch_model

TOL = 1e-4
NAME = "timm/xception41"


@pytest.fixture(scope="module")
def converted():
    """(keras model, report) of NAME at SMALL, converted once per module."""
    return zoo.convert(NAME, input_size=SMALL)


@pytest.fixture(scope="module")
def torch_model():
    """The perturbed torch module zoo.convert compared with (fixed seed)."""
    variant, tag = get_variant(NAME)
    return load_torch_model(variant, tag, "random").module


def _rebuilt(full, **builder_overrides):
    """The recipe's Keras model built with `builder_overrides`, carrying the converted weights
    (copied layer by layer: the overrides change functions, not variable names or shapes)."""
    from zoo.models.xception import xception

    variant, _ = get_variant(NAME)
    model = xception(**{**variant.builder_kwargs, **builder_overrides})
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    return model


def _rel_err(module, model, h=SMALL, w=SMALL, feature=None):
    """max|keras - torch| / max|torch| of the logits, or of an intermediate output
    (feature = (torch module path, keras layer name))."""
    import keras

    x = np.random.default_rng(11).standard_normal((2, h, w, 3)).astype(np.float32)
    captured = {}
    hook = None
    if feature:
        hook = module.get_submodule(feature[0]).register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("f", out.detach().clone()))
        model = keras.Model(model.inputs, model.get_layer(feature[1]).output)
    try:
        with torch.no_grad():
            ref = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    finally:
        if hook:
            hook.remove()
    if feature:
        ref = captured["f"].permute(0, 2, 3, 1).numpy()
    got = np.asarray(model.predict_on_batch(x))
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_parity_small(converted):
    _model, report = converted
    parity = report["parity"]["in_memory"]
    print(f"{NAME} @ {SMALL}: max_rel {parity['max_rel']:.2e}")
    assert parity["max_rel"] < TOL, parity
    assert set(parity["features"]) == {f"stage{i}" for i in range(1, 6)}
    assert parity["logits"]["top1"] == 1.0


def test_odd_non_square_size():
    # 75 x 93 -> 38 x 47 -> 19 x 24 -> 10 x 12 -> 5 x 6 -> 3 x 3: odd and even inputs at every
    # stride-2 depthwise conv (symmetric padding 1) and stride-2 1x1 shortcut.
    err = parity_at(NAME, 75, 93, input_size=SMALL)
    assert err < TOL, err


def test_pitfall_strided_depthwise_convs_pad_symmetrically(converted, torch_model):
    """torch pads the stride-2 3x3 convs (stem and depthwise) by 1 on every side; TF "same"
    pads 0 before and 1 after on even inputs, shifting every downsampled map by one pixel (the
    global average pool then hides much of it: ~1e-3 on the logits, far more per stage)."""
    full, _ = converted   # matches torch: test_parity_small
    stage3 = ("blocks.2.stack.act3", "stage3")
    assert _rel_err(torch_model, full, feature=stage3) < TOL
    assert _rel_err(torch_model, _rebuilt(full, padding="same"), feature=stage3) > 100 * TOL


def test_pitfall_shortcut_reads_the_input_before_the_first_relu(converted, torch_model):
    """Each module starts with ReLU(inplace=False): the stack sees relu(x), the shortcut the raw
    x. Made in-place, the same torch model is what a Keras graph taking the shortcut after the
    ReLU would compute; the converted model must not agree with it."""
    full, _ = converted
    acts = [m.stack.act1 for m in torch_model.blocks if hasattr(m.stack, "act1")]
    assert acts and not any(a.inplace for a in acts)
    try:
        for a in acts:
            a.inplace = True
        err = _rel_err(torch_model, full, feature=("blocks.11.stack.act3", "stage4"))
    finally:
        for a in acts:
            a.inplace = False
    assert err > 100 * TOL


def test_pitfall_batchnorm_eps_is_checked(torch_model):
    """The TF-trained aligned Xceptions use BatchNorm eps 1e-3, not torch's 1e-5: a builder left
    at torch's default is refused by the engine, every BN named."""
    from zoo.conversion.mapping import plan_mapping
    from zoo.models.xception import xception

    variant, _ = get_variant(NAME)
    model = xception(**{**variant.builder_kwargs, "bn_eps": 1e-5})
    state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    with pytest.raises(zoo.MappingError) as e:
        plan_mapping(state, model, variant.rules, variant.recipe.ignore,
                     modules=dict(torch_model.named_modules()), context=NAME)
    assert "eps 0.001 != keras epsilon 1e-05" in str(e.value)
    assert "'blocks.0.stack.conv1.bn_dw' -> keras layer 'block0_conv1_bn_dw'" in str(e.value)


def test_batchnorm_sits_between_depthwise_and_pointwise(converted):
    """timm's SeparableConv2d is dw -> BN -> pw -> BN (Keras' SeparableConv2D has no BN in
    between and could not hold bn_dw)."""
    full, _ = converted
    assert full.get_layer("block0_conv1_pw").input is full.get_layer("block0_conv1_bn_dw").output
    assert full.get_layer("block0_conv1_bn_dw").input is full.get_layer("block0_conv1_dw").output


def test_features_only_gives_one_output_per_stage(converted):
    """Stages are timm's feature taps: the ReLU feeding each strided separable conv, then the
    last block's output, so features_only matches timm's `features_only=True`."""
    import keras
    import timm

    from zoo.models.xception import xception

    full, _ = converted
    variant, _ = get_variant(NAME)
    feats = xception(**variant.builder_kwargs, features_only=True)
    tm = timm.create_model("xception41", features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == tm.feature_info.channels()
    for layer in feats.layers:
        layer.set_weights(full.get_layer(layer.name).get_weights())
    x = np.random.default_rng(5).standard_normal((1, SMALL, SMALL, 3)).astype(np.float32)
    outs = feats.predict_on_batch(x)
    assert [SMALL // o.shape[1] for o in outs] == tm.feature_info.reduction()   # 2 ... 32
    probe = keras.Model(full.inputs, [full.get_layer(f"stage{i}").output for i in range(1, 6)])
    for got, want in zip(outs, probe.predict_on_batch(x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
