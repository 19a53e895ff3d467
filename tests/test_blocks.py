"""zoo.models.blocks against torch: the one padding rule (symmetric, dilated, per-axis, TF "SAME"
as timm's Conv2dSame), squeeze-excite with both gates, the FeatureStage marker and the feature
metadata that `create_model(features_only=True, out_indices=...)` is built on."""
import keras
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame

import zoo
from zoo.models import blocks, feature_info


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _rel(got, ref):
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _input(hw, c=4, seed=0):
    return np.random.default_rng(seed).standard_normal((2, *hw, c)).astype(np.float32)


def _run(build, x, weight, depthwise=False):
    """Applies `build(inputs)` (the block under test, its conv named "c") with the torch weight."""
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, build(inputs))
    layer = model.get_layer("c")
    # torch (out, in/groups, kh, kw) -> Keras (kh, kw, in, out), depthwise (kh, kw, C, 1)
    kernel = weight.permute(2, 3, 0, 1) if depthwise else weight.permute(2, 3, 1, 0)
    layer.set_weights([kernel.numpy()])
    return np.asarray(model(x))


@pytest.mark.parametrize("kernel, stride, dilation, padding", [
    (3, 2, 1, None), (7, 2, 1, None), (1, 2, 1, None), (3, 1, 1, None), (3, 1, 2, None),
    (5, 2, 1, 0), (3, 1, 1, 0), ((1, 7), 1, 1, (0, 3)), ((7, 1), 2, 1, (3, 0)),
    ((1, 3), 2, 1, (0, 1))])
@pytest.mark.parametrize("hw", [(8, 8), (9, 9), (8, 11)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_conv2d_pads_like_torch(kernel, stride, dilation, padding, hw):
    """nn.Conv2d(padding=p) with p = dilation * (k - 1) // 2 by default, or explicit (per axis).
    (Keras convs take no stride > 1 together with dilation > 1.)"""
    k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    p = padding if padding is not None else (dilation * (k[0] - 1) // 2, dilation * (k[1] - 1) // 2)
    weight = torch.randn(6, 4, *k, generator=torch.Generator().manual_seed(1))
    x = _input(hw)
    ref = _nhwc(F.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), weight, stride=stride,
                         padding=p, dilation=dilation))
    got = _run(lambda t: blocks.conv2d(t, 6, kernel, stride, padding=padding, dilation=dilation,
                                       name="c"), x, weight)
    assert _rel(got, ref) < 1e-5


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(8, 8), (9, 9), (10, 7)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_depthwise_pads_like_torch(stride, hw):
    weight = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(2))
    x = _input(hw)
    ref = _nhwc(F.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), weight, stride=stride,
                         padding=2, groups=4))
    got = _run(lambda t: blocks.depthwise(t, 5, stride, name="c"), x, weight, depthwise=True)
    assert _rel(got, ref) < 1e-5


def test_keras_same_on_strided_even_input_is_not_torch_padding():
    """Why `pad` pads by hand: Keras "same" puts the odd padding pixel at the end."""
    weight = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    x = _input((8, 8))
    ref = _nhwc(F.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), weight, stride=2, padding=1))
    got = _run(lambda t: keras.layers.Conv2D(6, 3, 2, padding="same", use_bias=False, name="c")(t),
               x, weight)
    assert _rel(got, ref) > 0.1


@pytest.mark.parametrize("kernel, stride, dilation", [(3, 2, 1), (5, 2, 1), (3, 1, 2), (4, 2, 1),
                                                      (3, 1, 1)])
@pytest.mark.parametrize("hw", [(8, 8), (9, 9), (8, 13)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_tf_same_matches_timm_conv2d_same(kernel, stride, dilation, hw):
    """timm's Conv2dSame (tf_* weights) pads at run time, more at the end on some sizes."""
    torch.manual_seed(3)
    tconv = Conv2dSame(4, 6, kernel, stride=stride, dilation=dilation, bias=False).eval()
    x = _input(hw)
    with torch.no_grad():
        ref = _nhwc(tconv(torch.from_numpy(x.transpose(0, 3, 1, 2))))
    cfg = blocks.Settings(padding=blocks.TF_SAME)
    got = _run(lambda t: blocks.conv2d(t, 6, kernel, stride, dilation=dilation, name="c",
                                       cfg=cfg), x, tconv.weight.detach())
    assert _rel(got, ref) < 1e-5
    if (kernel, stride, hw) == (3, 2, (8, 8)):   # here TF "SAME" is not torch's padding 1
        symmetric = _nhwc(F.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                   tconv.weight.detach(), stride=2, padding=1))
        assert _rel(got, symmetric) > 0.1


def test_tf_same_depthwise_matches_timm_conv2d_same():
    torch.manual_seed(4)
    tconv = Conv2dSame(4, 4, 5, stride=2, groups=4, bias=False).eval()
    x = _input((10, 10))
    with torch.no_grad():
        ref = _nhwc(tconv(torch.from_numpy(x.transpose(0, 3, 1, 2))))
    cfg = blocks.Settings(padding=blocks.TF_SAME)
    got = _run(lambda t: blocks.depthwise(t, 5, 2, name="c", cfg=cfg), x, tconv.weight.detach(),
               depthwise=True)
    assert _rel(got, ref) < 1e-5


@pytest.mark.parametrize("gate, naming", [("sigmoid", blocks.SE_FC), ("sigmoid", blocks.SE_CONV),
                                          ("hard_sigmoid", blocks.SE_CONV_HARD)])
def test_squeeze_excite_matches_torch(gate, naming):
    g = torch.Generator().manual_seed(5)
    c, rd = 16, 8
    w1, b1 = torch.randn(rd, c, 1, 1, generator=g) * 0.5, torch.randn(rd, generator=g)
    w2, b2 = torch.randn(c, rd, 1, 1, generator=g) * 0.5, torch.randn(c, generator=g)
    x = _input((5, 6), c)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2))
    s = F.relu(F.conv2d(tx.mean((2, 3), keepdim=True), w1, b1))
    s = F.conv2d(s, w2, b2)
    ref = _nhwc(tx * (torch.sigmoid(s) if gate == "sigmoid" else F.hardsigmoid(s)))

    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, blocks.squeeze_excite(inputs, rd, prefix="b", gate=gate,
                                                      naming=naming))
    model.get_layer(f"b_{naming.reduce}").set_weights([w1.permute(2, 3, 1, 0).numpy(), b1.numpy()])
    model.get_layer(f"b_{naming.expand}").set_weights([w2.permute(2, 3, 1, 0).numpy(), b2.numpy()])
    assert _rel(np.asarray(model(x)), ref) < 1e-5
    # the other gate is a different function: the test can tell them apart
    other = torch.sigmoid(s) if gate != "sigmoid" else F.hardsigmoid(s)
    assert _rel(np.asarray(model(x)), _nhwc(tx * other)) > 1e-2


def test_feature_stage_survives_keras_save(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = blocks.stage_end(blocks.conv2d(inputs, 8, 3, 2, name="c1"), "stage1", 2)
    x = blocks.stage_end(blocks.conv2d(x, 12, 3, 2, name="c2"), "stage2", 4)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    expected = [{"name": "stage1", "channels": 8, "reduction": 2},
                {"name": "stage2", "channels": 12, "reduction": 4}]
    assert feature_info(model) == expected
    assert feature_info(loaded) == expected
    x = _input((16, 16), 3)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def _timm_features(arch, out_indices):
    info = timm.create_model(arch, features_only=True, out_indices=out_indices).feature_info
    return info.channels(), info.reduction()


@pytest.mark.parametrize("name, arch, timm_indices", [
    # timm's stage 0 is the stride-2 stem of ResNet, which the recipe does not compare
    ("timm/resnet50", "resnet50", (1, 2, 3, 4)),
    ("timm/convnext_atto", "convnext_atto", (0, 1, 2, 3)),
    ("timm/inception_v3", "inception_v3", (0, 1, 2, 3, 4)),
])
def test_feature_info_matches_timm(name, arch, timm_indices):
    model = zoo.create_model(name, features_only=True)
    info = feature_info(model)
    channels, reductions = _timm_features(arch, timm_indices)
    assert [f["channels"] for f in info] == channels
    assert [f["reduction"] for f in info] == reductions
    assert [o.shape[-1] for o in model.outputs] == channels


def test_out_indices_like_timm():
    model = zoo.create_model("timm/convnext_atto", features_only=True, out_indices=(1, -1),
                             input_shape=(64, 64, 3))
    channels, reductions = _timm_features("convnext_atto", (1, 3))
    assert [o.shape[-1] for o in model.outputs] == channels
    assert [64 // o.shape[1] for o in model.outputs] == reductions


@pytest.mark.parametrize("bad", [(4,), (-5,), (0, 7), ()])
def test_out_indices_out_of_range_names_the_valid_range(bad):
    with pytest.raises(zoo.ZooError, match=r"4 feature stages, valid indices are -4 \.\.\. 3"):
        zoo.create_model("timm/convnext_atto", features_only=True, out_indices=bad)


def test_out_indices_needs_features_only():
    with pytest.raises(zoo.ZooError, match="features_only=True"):
        zoo.create_model("timm/convnext_atto", out_indices=(0,))
