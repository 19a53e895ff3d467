"""torchvision segmentation models (FCN, DeepLabV3, LR-ASPP): the bilinear upsampling against
torch's F.interpolate, the dilated backbones' hyper-parameters against torchvision's modules, the
per-pixel metrics, and one model end to end (perturbed weights) at a non-square size through
the validation code. Parity of every configuration at small and odd sizes, the .keras round trip
and features_only are tested in tests/test_catalogue.py (recipes/segmentation.yaml)."""
import dataclasses

import keras
import numpy as np
import pytest
import torch
import torchvision
from torch.nn import functional as F

import zoo
from helpers import eager, plan_for
from zoo.catalog import get_variant
from zoo.layers.resize import ResizeLike
from zoo.models import get_builder
from zoo.validate import compare, compare_outputs

NON_SQUARE = (104, 136)   # the end-to-end test's size: non-square, odd maps at stride 16


def _resize(x, size, **interpolate):
    """(Keras ResizeLike, torch F.interpolate) of an NHWC batch to `size`."""
    ref = np.zeros((1, *size, 1), np.float32)
    got = np.asarray(ResizeLike()([x, ref]))
    t = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), size=size,
                      mode="bilinear", **interpolate)
    return got, t.numpy().transpose(0, 2, 3, 1)


# (input H, W) -> (output H, W): the heads' cases (x8 and x16 to the input, a stride-16 map to a
# stride-8 one at odd sizes: not an integer ratio), the pooling branch's 1x1, a downscale, identity
@pytest.mark.parametrize("src,dst", [((25, 31), (200, 248)), ((13, 16), (200, 248)),
                                     ((13, 16), (25, 31)), ((1, 1), (13, 16)), ((1, 1), (1, 3)),
                                     ((25, 31), (13, 16)), ((7, 9), (7, 9))])
def test_tf_bilinear_resize_is_torch_interpolate(src, dst):
    """TF's bilinear resize (half-pixel centres, no antialias) is torch's F.interpolate(mode=
    "bilinear", align_corners=False): the same source coordinates and edge clamping."""
    x = np.random.default_rng(0).standard_normal((2, *src, 3)).astype(np.float32)
    got, want = _resize(x, dst, align_corners=False)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_resize_keeps_free_sizes_in_a_saved_model(tmp_path):
    """The target size is read at run time: one SavedModel serves any input size (a size fixed
    at trace time, or keras.ops.image.resize's static size, fails to export or to run)."""
    import tensorflow as tf

    x, ref = keras.Input((None, None, 3)), keras.Input((None, None, 1))
    keras.Model([x, ref], ResizeLike()([x, ref])).export(str(tmp_path), verbose=False)
    served = tf.saved_model.load(str(tmp_path)).serve
    for src, dst in [((5, 7), (11, 13)), ((1, 1), (4, 6))]:
        a = np.random.default_rng(3).standard_normal((1, *src, 3)).astype(np.float32)
        got = np.asarray(served([a, np.zeros((1, *dst, 1), np.float32)]))
        want = _resize(a, dst, align_corners=False)[1]
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_pitfall_align_corners_and_antialias_are_other_functions():
    """What a hand-written upsampling could get wrong: align_corners=True samples elsewhere, and
    antialiasing (tf.image.resize(antialias=True), torch's antialias=True) changes a downscale;
    either is far above the recipe's 1e-4 bound."""
    x = np.random.default_rng(1).standard_normal((1, 13, 16, 3)).astype(np.float32)
    got, corners = _resize(x, (25, 31), align_corners=True)
    assert np.abs(got - corners).max() > 0.1
    got, smooth = _resize(x, (7, 9), align_corners=False, antialias=True)
    assert np.abs(got - smooth).max() > 0.1


def test_per_pixel_agreement_of_a_dense_classification_output():
    """`metric: classification` on an NHWC map counts pixels, over the class (last) axis:
    one pixel of four changes its class here (and its top-5 set, of 6 classes, by one)."""
    ref = np.zeros((1, 2, 2, 6), np.float32)
    ref[..., :] = np.arange(6, dtype=np.float32)   # class 5 first, class 0 last, everywhere
    out = ref.copy()
    out[0, 1, 0, 0] = 10.0                          # class 0 wins at one pixel
    m = compare(ref, out, topk=True)
    assert m["top1"] == 0.75
    assert m["top5"] == pytest.approx(1 - 0.25 / 5)   # {0, 5, 4, 3, 2} vs {5, 4, 3, 2, 1}
    assert "top1" not in compare(ref, out)             # regression outputs: no agreement


@pytest.mark.parametrize("head,backbone,aux,outputs", [
    ("fcn", "resnet50", True, {"out", "aux"}),
    ("lraspp", "mobilenet_v3_large", False, {"out"}),
])
def test_named_outputs_at_the_input_size(head, backbone, aux, outputs):
    """A dict like torchvision's OrderedDict, each map at the input's size with `classes`
    channels; classifier_activation applies over the class axis."""
    model = get_builder("segmentation")(head=head, backbone=backbone, aux=aux, classes=5,
                                        classifier_activation="softmax")
    assert set(model.output) == outputs
    x = np.random.default_rng(2).standard_normal((1, 40, 56, 3)).astype(np.float32)
    for y in model(x).values():
        assert y.shape == (1, 40, 56, 5)
        np.testing.assert_allclose(np.asarray(y).sum(-1), 1.0, atol=1e-5)


def test_lraspp_refuses_an_auxiliary_head():
    with pytest.raises(ValueError, match="no auxiliary head"):
        get_builder("segmentation")(head="lraspp", backbone="mobilenet_v3_large", aux=True)


def _conv_hparams(model, names):
    return [(model.get_layer(n).strides, model.get_layer(n).dilation_rate) for n in names]


def test_dilated_backbones_follow_torchvision():
    """Every 3x3 / depthwise conv of the dilated backbones strides and dilates as torchvision's:
    ResNet's first block of a dilated stage keeps the dilation before it (layer3.0: 1, layer4.0:
    2, then 2 and 4), MobileNetV3's last stage dilates every depthwise conv by 2 and strides none."""
    tv = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None,
                                                                      weights_backbone=None)
    model = get_builder("segmentation")(head="deeplabv3", backbone="mobilenet_v3_large",
                                        input_shape=(64, 64, 3))
    blocks = range(1, 16)
    want = [(tv.backbone[str(k)].block[0 if k == 1 else 1][0].stride,
             tv.backbone[str(k)].block[0 if k == 1 else 1][0].dilation) for k in blocks]
    assert _conv_hparams(model, [f"block{k}_conv_dw" for k in blocks]) == want
    assert want[-3:] == [((1, 1), (2, 2))] * 3

    tv = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None)
    model = get_builder("segmentation")(head="fcn", backbone="resnet50", input_shape=(64, 64, 3))
    names = [(s, b) for s, d in enumerate((3, 4, 6, 3), start=1) for b in range(d)]
    want = [(getattr(tv.backbone, f"layer{s}")[b].conv2.stride,
             getattr(tv.backbone, f"layer{s}")[b].conv2.dilation) for s, b in names]
    assert _conv_hparams(model, [f"stage{s}_block{b}_conv2" for s, b in names]) == want
    assert [w[1][0] for w in want[7:]] == [1] + [2] * 5 + [2, 4, 4]
    assert [i["reduction"] for i in zoo.models.feature_info(model)] == [4, 8, 8, 8]


def test_pitfall_undilated_backbone_is_refused_by_the_mapping():
    """A backbone that strides where torchvision dilates has the same weight shapes: only the
    engine's conv hyper-parameter check stops it before any forward pass (the right model maps
    in tests/test_catalogue.py)."""
    import zoo.models.segmentation as seg

    tv = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None,
                                                      aux_loss=True)

    def undilated(inputs):
        x = seg.resnet.__wrapped__(inputs, depths=(3, 4, 6, 3))
        return x, seg._layer_output(inputs, x, "stage3")

    seg.BACKBONES["resnet50"], right = undilated, seg.BACKBONES["resnet50"]
    try:
        wrong = get_builder("segmentation")(head="fcn", backbone="resnet50",
                                            input_shape=(64, 64, 3))
    finally:
        seg.BACKBONES["resnet50"] = right
    with pytest.raises(zoo.MappingError, match="dilation"):
        plan_for("torchvision/fcn_resnet50", tv, wrong)


@pytest.fixture(scope="module")
def deeplab_mobilenet():
    """DeepLabV3-MobileNetV3 with aux head (ASPP with its pooling branch, the dilated MobileNetV3,
    both outputs) from the pipeline's loader: perturbed weights, BatchNorm statistics estimated at
    128 px (the recipe's 520 costs a minute here; the catalogue test calibrates there)."""
    from zoo.conversion.mapping import apply_plan, plan_mapping
    from zoo.conversion.sources import load_torch_model

    variant, tag = get_variant("torchvision/deeplabv3_mobilenet_v3_large")
    variant = dataclasses.replace(variant, input_size=128)
    tm = load_torch_model(variant, tag, "random")
    model = get_builder("segmentation")(head="deeplabv3", backbone="mobilenet_v3_large",
                                        classes=tm.num_classes)
    plan = plan_mapping(tm.state_dict_numpy(), model, variant.rules, variant.recipe.ignore,
                        modules=dict(tm.module.named_modules()))
    apply_plan(model, plan)
    yield variant, tm, model
    keras.backend.clear_session()


def test_end_to_end_parity_at_a_non_square_size(deeplab_mobilenet):
    """Validation's own comparison (zoo.validate.compare_outputs, the recipe's output specs) at
    104 x 136: per-pixel logits and every backbone stage within the tolerance and the same class
    at (nearly) every pixel, for `out` and `aux`, on noise and smooth image-like inputs."""
    from zoo.conversion.forward import torch_outputs
    from zoo.io_spec import image_batch

    variant, tm, model = deeplab_mobilenet
    height, width = NON_SQUARE
    x = image_batch(width, 3, variant.preprocessing, height=height)
    specs, features = variant.output_specs(), dict(variant.features)
    ref = torch_outputs(tm.module, x, features, out_specs=specs)
    # one eager call (validation's keras_outputs traces a tf.function: seconds more here)
    heads = keras.Model(model.input, [model.output[s.name] for s in specs])
    values = eager(heads, x, list(features.values()))
    got = {"outputs": {s.name: v for s, v in zip(specs, values)},
           "features": dict(zip(features.values(), values[len(specs):]))}
    result = compare_outputs(ref, got, variant.tolerance, specs)
    assert set(result["features"]) == {f"stage{i}" for i in range(1, 8)}
    assert result["passed"], result
    for name in ("out", "aux"):
        m = result["outputs"][name]
        assert ref["outputs"][name].shape == (len(x), *NON_SQUARE, tm.num_classes)
        assert m["top1"] >= 0.999 and m["top5"] >= 0.999, (name, m)
