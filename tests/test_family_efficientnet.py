"""EfficientNet family (recipes/efficientnet.yaml, zoo/models/efficientnet.py:efficientnet):
parity of the B0s of both sources, odd non-square inputs, and one test per pitfall."""
import numpy as np
import pytest
import torch

import zoo
from helpers import SMALL, parity_at
from zoo.catalog import get_variant
from zoo.conversion.sources import load_torch_model

TOL = 1e-4


@pytest.fixture(scope="module")
def converted():
    """converted(name) -> (keras model, report) at SMALL, each converted once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = zoo.convert(name, input_size=SMALL)
        return cache[name]

    return get


def _torch_nhwc(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def _rel(got, ref):
    return float(np.abs(np.asarray(got) - ref).max() / np.abs(ref).max())


def _mapped(name, **builder_overrides):
    """(perturbed torch module, Keras model built with the recipe's kwargs + overrides, mapped)."""
    from zoo.conversion.mapping import apply_plan, plan_mapping
    from zoo.models import get_builder

    variant, tag = get_variant(name)
    tm = load_torch_model(variant, tag, "random")
    model = get_builder(variant.builder)(**{**variant.builder_kwargs, **builder_overrides})
    plan = plan_mapping(tm.state_dict_numpy(), model, variant.rules, variant.recipe.ignore,
                        modules=dict(tm.module.named_modules()), context=name)
    apply_plan(model, plan)
    return tm.module, model


@pytest.mark.parametrize("name", ["timm/efficientnet_b0", "torchvision/efficientnet_b0"])
def test_parity_small(name, converted):
    _model, report = converted(name)
    parity = report["parity"]["in_memory"]
    assert parity["max_rel"] < TOL, parity
    assert set(parity["features"]) == {f"stage{i}" for i in range(1, 8)}
    assert parity["logits"]["top1"] == 1.0


def test_tf_same_padding_at_odd_non_square_size():
    # 75 x 93 -> 38 x 47 -> 19 x 24 -> 10 x 12 -> 5 x 6 -> 3 x 3: both parities at strided
    # layers, so TF "SAME" padding is asymmetric on some and symmetric on others.
    err = parity_at("timm/tf_efficientnet_b0", 75, 93, input_size=SMALL)
    assert err < TOL, err


def test_symmetric_padding_at_odd_non_square_size(converted):
    name = "torchvision/efficientnet_b0"
    model, _ = converted(name)
    variant, tag = get_variant(name)
    module = load_torch_model(variant, tag, "random").module   # same seed: same weights
    x = np.random.default_rng(3).standard_normal((2, 75, 93, 3)).astype(np.float32)
    ref = _torch_nhwc(module, x)
    got = model.predict_on_batch(x)
    assert _rel(got, ref) < TOL
    assert (np.asarray(got).argmax(1) == ref.argmax(1)).all()


# ------------------------------------------------------------------ pitfalls

def test_pitfall_tf_weights_need_tf_same_padding():
    """tf_efficientnet_b0 built with torch's symmetric padding: wrong wherever a strided layer
    sees an even size (TF pads the odd pixel at the end only), right only when all are odd."""
    module, wrong = _mapped("timm/tf_efficientnet_b0", tf_padding=False)
    rng = np.random.default_rng(0)
    even = rng.standard_normal((2, SMALL, SMALL, 3)).astype(np.float32)   # 64: even everywhere
    assert _rel(wrong.predict_on_batch(even), _torch_nhwc(module, even)) > 1e-2
    # 65 -> 33 -> 17 -> 9 -> 5 -> 3: every strided layer sees an odd size and "SAME" pads
    # symmetrically, so the mistake is invisible there: tests must use even sizes too.
    odd = rng.standard_normal((2, 65, 65, 3)).astype(np.float32)
    assert _rel(wrong.predict_on_batch(odd), _torch_nhwc(module, odd)) < TOL


def test_pitfall_tf_weights_need_bn_eps_1e_3():
    """tf_* weights were trained with BN eps 1e-3; the engine refuses a Keras model with torch's
    default 1e-5 (every BatchNorm is reported) instead of producing a silently-off model."""
    with pytest.raises(zoo.MappingError) as e:
        _mapped("timm/tf_efficientnet_b0", bn_eps=1e-5)
    msg = str(e.value)
    assert "eps 0.001 != keras epsilon 1e-05" in msg
    assert "torch module 'bn1' -> keras layer 'stem_bn'" in msg
    assert "49 problem(s)" in msg   # stem, 16 blocks (2 or 3 BNs each), head


def test_pitfall_drop_path_is_identity_at_inference(converted):
    """torchvision's stochastic depth (0.2) is kept for training as per-sample Dropout on the
    residual branches; inference must be deterministic and equal torch's eval()."""
    name = "torchvision/efficientnet_b0"
    model, _ = converted(name)
    drop = [layer for layer in model.layers if layer.name.endswith("_drop_path")]
    assert len(drop) == 9 and max(layer.rate for layer in drop) == pytest.approx(0.2 * 14 / 16)
    variant, tag = get_variant(name)
    module = load_torch_model(variant, tag, "random").module
    x = np.random.default_rng(4).standard_normal((4, SMALL, SMALL, 3)).astype(np.float32)
    ref = _torch_nhwc(module, x)
    first = model.predict_on_batch(x)
    np.testing.assert_array_equal(first, model.predict_on_batch(x))
    assert _rel(first, ref) < TOL
    assert _rel(model(x, training=False), ref) < TOL   # eager call, explicit inference mode
    # In training mode the branches really are dropped: a model that applied drop path at
    # inference would be this far off.
    assert _rel(model(x, training=True), ref) > 1e-2


def test_timm_and_torchvision_widths_agree_with_their_sources():
    """B3 (width 1.2, depth 1.4): both sources' rounding of stem/stage/SE/head widths."""
    import timm
    import torchvision

    from zoo.models.efficientnet import efficientnet

    def count(keras_model):
        return sum(int(np.prod(w.shape)) for w in keras_model.weights)

    def torch_count(m):
        return sum(v.numel() for k, v in m.state_dict().items() if "num_batches" not in k)

    kw = dict(width_multiplier=1.2, depth_multiplier=1.4, input_shape=(None, None, 3))
    assert count(efficientnet(**kw)) == torch_count(timm.create_model("efficientnet_b3"))
    assert count(efficientnet(rounding="torchvision", **kw)) == \
        torch_count(torchvision.models.efficientnet_b3())


def test_features_only_gives_one_output_per_stage(converted):
    from zoo.models.efficientnet import efficientnet

    full, _ = converted("timm/efficientnet_b0")
    feats = efficientnet(features_only=True)
    assert [o.shape[-1] for o in feats.outputs] == [16, 24, 40, 80, 112, 192, 320]
    for layer in feats.layers:
        layer.set_weights(full.get_layer(layer.name).get_weights())
    x = np.random.default_rng(5).standard_normal((1, SMALL, SMALL, 3)).astype(np.float32)
    outs = feats.predict_on_batch(x)
    assert [o.shape[1] for o in outs] == [32, 16, 8, 4, 4, 2, 2]   # strides 2 ... 32
    import keras
    probe = keras.Model(full.inputs, [full.get_layer(f"stage{i}").output for i in range(1, 8)])
    for got, want in zip(outs, probe.predict_on_batch(x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
