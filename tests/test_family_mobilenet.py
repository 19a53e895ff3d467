"""MobileNetV2 / V3 (timm and torchvision through one Keras builder each): the pitfalls of
the family: hard-sigmoid / hard-swish definitions, torchvision's MobileNetV3 BatchNorm
eps/momentum, the pre-logits head layer type, squeeze-excite widths, the padding of strided
depthwise convs; exact float64 parity of timm's MobileNetV3-large; the classifier layouts.
Parity at small and odd non-square sizes, include_top=False and features_only are tested for
every catalogue configuration in tests/test_catalogue.py."""
import copy

import keras
import numpy as np
import pytest
import timm
import torch
import torchvision
from torch.nn import functional as F

import zoo
import zoo.models.blocks
from helpers import SMALL, pipeline_parity, plan_for, rel
from zoo.catalog import get_variant
from zoo.conversion.mapping import apply_plan, plan_mapping
from zoo.conversion.pipeline import torch_outputs
from zoo.conversion.sources import load_torch_model
from zoo.io_spec import image_batch
from zoo.models import get_builder
from zoo.validate import compare_outputs, keras_outputs


def _keras2_hard_sigmoid(x):
    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


# ---------------------------------------------------------------------------------- activations

def test_keras3_hard_sigmoid_and_hard_swish_are_torchs():
    # every kink (-3, 0, 3, 6) and both saturated ends
    x = np.concatenate([np.linspace(-8, 8, 1601), [-3.0, 0.0, 3.0, 6.0]]).astype(np.float32)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(np.asarray(keras.activations.hard_sigmoid(x)),
                               F.hardsigmoid(t).numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(keras.activations.hard_silu(x)),
                               F.hardswish(t).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(keras.layers.ReLU(max_value=6.0)(x)),
                               F.relu6(t).numpy(), rtol=0, atol=0)
    # Keras 2's hard_sigmoid (0.2x + 0.5, saturating at +-2.5) is another function: 1/12 off at 2.5
    assert np.abs(np.asarray(_keras2_hard_sigmoid(x)) - F.hardsigmoid(t).numpy()).max() > 0.08


def test_builders_use_those_activations():
    model = get_builder("mobilenet_v3")(arch="small", head="linear")
    acts = {type(layer).__name__ + ":" + getattr(getattr(layer, "activation", None), "__name__", "")
            for layer in model.layers if "_se_gate" in layer.name or layer.name == "head_act"}
    assert acts == {"Activation:hard_sigmoid", "Activation:hard_silu"}
    assert model.get_layer("stem_act").activation.__name__ == "hard_silu"
    v2 = get_builder("mobilenet_v2")()
    assert v2.get_layer("block2_act1").max_value == 6.0


# ------------------------------------------------------------------------------- float64 parity

def test_timm_large_is_exact_in_float64():
    """The mapping is exact, not merely within float32 tolerance: in float64 Keras and torch agree
    to ~1e-12 (timm's depthwise init is sqrt(C) larger than torchvision's and hard-sigmoid SE gates
    amplify rounding, so this is where a float32 check alone would be least convincing)."""
    name = "timm/mobilenetv3_large_100"
    variant, tag = get_variant(name)
    tm = load_torch_model(variant, tag, "random")
    x = image_batch(SMALL, 3, tm.preprocessing).astype(np.float64)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        ref = copy.deepcopy(tm.module).double()(xt).numpy()
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        model = get_builder(variant.builder)(**variant.builder_kwargs)
        apply_plan(model, plan_mapping(tm.state_dict_numpy(), model, variant.rules,
                                       variant.recipe.ignore,
                                       modules=dict(tm.module.named_modules())))
        got = np.asarray(model.predict_on_batch(x))
    finally:
        keras.config.set_dtype_policy(policy)
    assert got.dtype == np.float64
    assert rel(got, ref) < 1e-9


# ------------------------------------------------------------------------------------- pitfalls

@pytest.mark.parametrize("layer_suffix, wrong", [
    ("_se_gate", _keras2_hard_sigmoid),
    ("_act", lambda x: x * _keras2_hard_sigmoid(x)),   # hard-swish built on Keras 2's sigmoid
])
def test_pitfall_keras2_hard_sigmoid_breaks_parity(layer_suffix, wrong, converted_small,
                                                   torch_model):
    name = "torchvision/mobilenet_v3_small"
    variant, _ = get_variant(name)
    model, _ = converted_small(name)   # altered below, restored after
    x = image_batch(SMALL, 3, variant.preprocessing)
    features = dict(variant.features)
    ref = torch_outputs(torch_model(name), x, features)
    swapped = {layer: layer.activation for layer in model.layers
               if isinstance(layer, keras.layers.Activation) and layer_suffix in layer.name}
    assert {f.__name__ for f in swapped.values()} == {"hard_sigmoid" if "gate" in layer_suffix
                                                      else "hard_silu"}
    try:
        for layer in swapped:
            layer.activation = wrong
        # a fresh Model over the same layers: its traced function sees the new activations
        p = compare_outputs(ref, keras_outputs(keras.Model(model.inputs, model.outputs), x,
                                               list(features.values())), variant.tolerance)
    finally:
        for layer, fn in swapped.items():
            layer.activation = fn
    assert not p["passed"] and p["max_rel"] > 10 * variant.tolerance, p["max_rel"]


def test_pitfall_torchvision_v3_batchnorm_eps_and_momentum_are_checked():
    module = torchvision.models.mobilenet_v3_small()
    bn = module.features[0][1]
    assert (bn.eps, bn.momentum) == (0.001, 0.01)
    wrong = get_builder("mobilenet_v3")(arch="small", head="linear")   # torch defaults: 1e-5, 0.1
    with pytest.raises(zoo.MappingError) as e:
        plan_for("torchvision/mobilenet_v3_small", module, wrong)
    assert "eps 0.001 != keras epsilon 1e-05" in str(e.value)
    assert "momentum 0.01 needs keras momentum 0.99, got 0.9" in str(e.value)
    right = get_builder("mobilenet_v3")(arch="small", head="linear", bn_eps=1e-3,
                                        torch_bn_momentum=0.01)
    assert right.get_layer("stem_bn").momentum == pytest.approx(0.99)
    plan_for("torchvision/mobilenet_v3_small", module, right)


@pytest.mark.parametrize("name, module_fn, wrong_head", [
    ("torchvision/mobilenet_v3_small", lambda: torchvision.models.mobilenet_v3_small(), "conv"),
    ("timm/mobilenetv3_small_100", lambda: timm.create_model("mobilenetv3_small_100"), "linear"),
])
def test_pitfall_pre_logits_layer_type_follows_the_source(name, module_fn, wrong_head):
    """timm's conv_head (1x1 conv, (out, in, 1, 1)) and torchvision's classifier.0 (Linear,
    (out, in)) are the same map on the pooled vector; the Keras layer must match the rank."""
    kwargs = dict(get_variant(name)[0].builder_kwargs, head=wrong_head)
    with pytest.raises(zoo.MappingError, match="head_(conv|fc)"):
        plan_for(name, module_fn(), get_builder("mobilenet_v3")(**kwargs))


def test_squeeze_excite_widths_match_both_sources():
    """torchvision: _make_divisible(C // 4, 8); timm: make_divisible(C * 0.25, 8). A plain C // 4
    would give 4 instead of 8 in MobileNetV3-small's first block."""
    model = get_builder("mobilenet_v3")(arch="small")
    keras_rd = [layer.filters for layer in model.layers if layer.name.endswith("_conv_reduce")]
    tv = [m.fc1.out_channels for m in torchvision.models.mobilenet_v3_small().modules()
          if type(m).__name__ == "SqueezeExcitation"]
    tm = [m.conv_reduce.out_channels for m in timm.create_model("mobilenetv3_small_100").modules()
          if type(m).__name__ == "SqueezeExcite"]
    assert keras_rd == tv == tm
    assert keras_rd[0] == 8 and model.get_layer("block1_conv_expand").filters == 16


def test_pitfall_keras_same_padding_on_strided_depthwise_fails(monkeypatch):
    def same_padding(x, kernel, stride=1, name=None, **_):
        return keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same",
                                            use_bias=False, name=name)(x)

    # every builder's depthwise conv comes from the block library
    monkeypatch.setattr(zoo.models.blocks, "depthwise", same_padding)
    p = pipeline_parity("torchvision/mobilenet_v3_small")
    assert not p["passed"]
    assert p["features"]["stage1"]["max_rel"] > 1e-2   # the first stride-2 depthwise conv


def test_classifier_layouts():
    tv = get_builder("mobilenet_v3")(arch="large", head="linear", dropout=0.2)
    names = [layer.name for layer in tv.layers]
    # torchvision: Linear -> Hardswish -> Dropout -> Linear
    assert names[names.index("avg_pool"):] == ["avg_pool", "head_fc", "head_act", "head_drop",
                                               "predictions"]
    assert tv.get_layer("head_drop").rate == 0.2
    # timm: pool -> conv_head (bias) -> act -> flatten -> classifier
    tm = get_builder("mobilenet_v3")(arch="large", head="conv")
    names = [layer.name for layer in tm.layers]
    assert names[names.index("avg_pool"):] == ["avg_pool", "head_conv", "head_act",
                                               "head_flatten", "predictions"]
    assert tm.get_layer("head_conv").use_bias
    v2 = get_builder("mobilenet_v2")(dropout=0.2)
    names = [layer.name for layer in v2.layers]
    assert names[-3:] == ["avg_pool", "head_drop", "predictions"]
