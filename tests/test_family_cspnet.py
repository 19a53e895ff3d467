"""CSPNet family (recipes/cspnet.yaml, zoo/models/cspnet.py:cspnet): parity of CSPResNet-50 and
CSPDarkNet-53, odd non-square inputs, and one test per pitfall of the family (cross-stage split
and concatenation order, max-pool padding after a LeakyReLU)."""
import numpy as np
import pytest
import torch

from helpers import SMALL, parity_at
from zoo.catalog import get_variant
from zoo.conversion.sources import load_torch_model
from zoo.models import cspnet as cspnet_module

TOL = 1e-4
VARIANTS = ["timm/cspresnet50", "timm/cspdarknet53"]


@pytest.fixture(scope="module")
def converted():
    """converted(name) -> (keras model, report) at SMALL, each converted once per module."""
    import zoo

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = zoo.convert(name, input_size=SMALL)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def torch_model():
    """torch_model(name) -> the perturbed torch module zoo.convert compared with (fixed seed)."""
    cache = {}

    def get(name):
        if name not in cache:
            variant, tag = get_variant(name)
            cache[name] = load_torch_model(variant, tag, "random").module
        return cache[name]

    return get


def _rebuilt(full, name):
    """The recipe's Keras model built again (with whatever is monkeypatched in the builder
    module), carrying the converted weights copied layer by layer."""
    variant, _ = get_variant(name)
    model = cspnet_module.cspnet(**variant.builder_kwargs)
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


@pytest.mark.parametrize("name", VARIANTS)
def test_parity_small(name, converted):
    _model, report = converted(name)
    parity = report["parity"]["in_memory"]
    print(f"{name} @ {SMALL}: max_rel {parity['max_rel']:.2e}")
    assert parity["max_rel"] < TOL, parity
    n = 5 if "darknet" in name else 4
    assert set(parity["features"]) == {f"stage{i}" for i in range(1, n + 1)}
    assert parity["logits"]["top1"] == 1.0


@pytest.mark.parametrize("name", VARIANTS)
def test_odd_non_square_size(name):
    # 75 x 93: odd and even sizes at every stride-2 conv (3x3, symmetric padding 1) and at
    # CSPResNet's stem pool.
    err = parity_at(name, 75, 93, input_size=SMALL)
    assert err < TOL, err


def _swapped_merge(xs, xb, name):
    import keras

    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([xb, xs])


def _swapped_split(x, name):
    from zoo.layers.shuffle import ChannelSplit

    xs, xb = ChannelSplit(2, name=f"{name}_split")(x)
    return xb, xs


@pytest.mark.parametrize("patch", [("_merge", _swapped_merge), ("_split", _swapped_split)],
                         ids=["concat_order", "split_halves"])
def test_pitfall_cross_stage_split_and_concat_order(patch, converted, torch_model, monkeypatch):
    """timm: `xs, xb = x.split(exp // 2, dim=1)`, blocks on xb (the second half), then
    `cat([xs, xb], dim=1)`. Both halves have the same width, so a swapped concatenation or a
    swapped split keeps every shape and maps cleanly; only the numbers are wrong."""
    name = "timm/cspresnet50"
    full, _ = converted(name)   # matches torch: test_parity_small
    monkeypatch.setattr(cspnet_module, *patch)
    assert _rel_err(torch_model(name), _rebuilt(full, name)) > 100 * TOL


def test_pitfall_stem_max_pool_after_leaky_relu_needs_minus_inf_padding(converted, torch_model,
                                                                        monkeypatch):
    """CSPResNet's stem pool follows a LeakyReLU, not a ReLU: its input is signed, so the
    "zero padding is safe after an activation" shortcut does not hold; torch pads with -inf.
    With slope 0.01 the negatives are small: zero padding moves the pooled map by ~2e-3
    (relative) but the logits by < 1e-4 only, which is why validation compares every stage
    output too (stage1 is off by ~1e-3)."""
    import keras

    def zero_padded_pool(pool, stride, padding, name):
        def apply(x):
            x = keras.layers.ZeroPadding2D(padding, name=f"{name}_zero_pad")(x)
            return keras.layers.MaxPooling2D(pool, stride, name=name)(x)
        return apply

    name = "timm/cspresnet50"
    full, _ = converted(name)
    module = torch_model(name)
    pool = ("stem.pool", "stem_pool")
    assert _rel_err(module, full, 67, 67, feature=pool) < TOL
    monkeypatch.setattr(cspnet_module, "TorchMaxPool2D", zero_padded_pool)
    wrong = _rebuilt(full, name)
    assert _rel_err(module, wrong, 67, 67, feature=pool) > 10 * TOL
    assert _rel_err(module, wrong, 67, 67, feature=("stages.0", "stage1")) > 5 * TOL


def test_features_only_gives_one_output_per_stage(converted):
    import keras

    full, _ = converted("timm/cspdarknet53")
    variant, _ = get_variant("timm/cspdarknet53")
    feats = cspnet_module.cspnet(**variant.builder_kwargs, features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [64, 128, 256, 512, 1024]
    for layer in feats.layers:
        layer.set_weights(full.get_layer(layer.name).get_weights())
    x = np.random.default_rng(5).standard_normal((1, SMALL, SMALL, 3)).astype(np.float32)
    outs = feats.predict_on_batch(x)
    assert [o.shape[1] for o in outs] == [32, 16, 8, 4, 2]   # stride-1 stem: strides 2 ... 32
    probe = keras.Model(full.inputs, [full.get_layer(f"stage{i}").output for i in range(1, 6)])
    for got, want in zip(outs, probe.predict_on_batch(x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
