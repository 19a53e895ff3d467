"""zoo.preprocessing against the real eval transforms: timm's
`create_transform(**resolve_data_config(...))` and torchvision's weight `transforms()`.

Expected geometry is read back from the real transforms (their Resize output size; their centre
crop applied to an image whose pixels hold their own coordinates), never computed by zoo. Pixel
values are compared with the PIL pipelines on real photos (scikit-image's sample images).
"""
import json
import math
import shutil
import types

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.data.transforms import CenterCropOrPad, ResizeKeepRatio
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

import zoo
from helpers import SMALL
from zoo.catalog import get_variant
from zoo.conversion import sources
from zoo.preprocessing import CROP_MODES, EvalTransform, transform_from_config

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# (height, width): landscape (the issue's 480x640), portrait, odd, square, off by one, smaller
# than the crop, and extreme aspect ratios
IMAGE_SIZES = [(480, 640), (640, 480), (333, 501), (224, 224), (257, 256), (100, 150),
               (37, 400), (401, 39)]
CROP_PCTS = [1.0, 0.95, 0.875]   # the catalogue's own values are added by catalogue_sources()


def photos():
    """Natural RGB photos of several sizes and aspect ratios, shipped with scikit-image."""
    import skimage.data

    return {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee(),
            "astronaut": skimage.data.astronaut(), "rocket": skimage.data.rocket()}


def catalogue_sources():
    """[(name, recorded preprocessing, source eval transform, source input size)] for every
    catalogue variant: what a conversion records in config.json (zoo.conversion.sources, from
    timm's pretrained_cfg / torchvision's weight transforms()) next to the source's own transform."""
    out = []
    for name in zoo.list_models():
        variant, tag = get_variant(name)
        kind, arch = variant.source.split(":", 1)
        if kind == "timm":
            import timm

            cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch).to_dict()
            pre, *_ = sources._metadata(variant, tag, types.SimpleNamespace(pretrained_cfg=cfg),
                                        "random")
            data = resolve_data_config({}, pretrained_cfg=cfg)
            out.append((name, variant, pre, create_transform(**data), data["input_size"][-1]))
        elif kind == "torchvision":
            pre, *_ = sources._metadata(variant, tag, None, "random")
            t = sources._tv_weights_enum(variant, tag).transforms()
            if not hasattr(t, "crop_size"):   # segmentation: resized without a crop, which the
                continue                      # eval transform cannot express (docs/pitfalls.md)
            out.append((name, variant, pre, t, t.crop_size[0]))
    return out


def source_geometry(transform, h, w):
    """(resized h, w, pad top, pad left, crop top, crop left) of timm's eval transform on an
    (h, w) image, read back from its own Resize and CenterCrop(OrPad) modules."""
    resize, crop = transform.transforms[:2]
    assert isinstance(resize, (T.Resize, ResizeKeepRatio)), transform
    assert isinstance(crop, (T.CenterCrop, CenterCropOrPad)), transform
    rw, rh = resize(Image.new("RGB", (w, h))).size
    # coordinates in an RGB image: low bytes in R, G; high bits in B with 0x80 set, which neither
    # pad colour (black, or timm's round(255 * mean) < 128) has
    y, x = np.mgrid[:rh, :rw]
    coded = np.stack([y & 255, x & 255, 0x80 | (y >> 8) << 3 | (x >> 8)], -1).astype(np.uint8)
    out = np.asarray(crop(Image.fromarray(coded))).astype(int)
    real = out[..., 2] >= 0x80
    pad_top, pad_left = int(real.any(1).argmax()), int(real.any(0).argmax())
    r, g, b = out[pad_top, pad_left]
    return rh, rw, pad_top, pad_left, r | (b >> 3 & 7) << 8, g | (b & 7) << 8


def ours(t: EvalTransform, h, w):
    return tuple(int(v) for v in t.geometry(h, w))


def timm_transform(size, crop_pct, crop_mode, interpolation="bilinear", **norm):
    return create_transform(input_size=(3, size, size), crop_pct=crop_pct, crop_mode=crop_mode,
                            interpolation=interpolation, **(norm or IMAGENET))


def zoo_transform(size, crop_pct, crop_mode, interpolation="bilinear", source="timm:x"):
    return transform_from_config({"crop_pct": crop_pct, "crop_mode": crop_mode,
                                  "interpolation": interpolation, **IMAGENET}, size, source)


def chw(x):
    return x.permute(1, 2, 0).numpy()


def test_the_issues_example_resizes_and_crops_like_timm():
    # issue 9: 480x640 at 224 / crop_pct 0.95 -> timm resizes to 235x313 and crops at (6, 44)
    t = zoo_transform(224, 0.95, "center")
    assert ours(t, 480, 640) == source_geometry(timm_transform(224, 0.95, "center"), 480, 640) \
        == (235, 313, 0, 0, 6, 44)


@pytest.fixture(scope="module")
def catalogue():
    return catalogue_sources()


def test_geometry_equals_timm_over_a_grid(catalogue):
    crop_pcts = sorted({*CROP_PCTS, *(pre["crop_pct"] for _, v, pre, _, _ in catalogue
                                      if v.source_kind == "timm")})
    assert len(crop_pcts) > len(CROP_PCTS)   # the catalogue brings its own values
    wrong = []
    for size in (224, 299):
        for crop_pct in crop_pcts:
            for mode in CROP_MODES:
                source = timm_transform(size, crop_pct, mode)
                t = zoo_transform(size, crop_pct, mode)
                for h, w in IMAGE_SIZES:
                    if ours(t, h, w) != source_geometry(source, h, w):
                        wrong.append((size, crop_pct, mode, (h, w), ours(t, h, w),
                                      source_geometry(source, h, w)))
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("mode", CROP_MODES)
def test_nearest_pipeline_equals_timm_pixel_for_pixel(mode):
    """With nearest interpolation zoo reproduces PIL's source indices, so the whole pipeline
    (resize, pad, crop, normalise) must give timm's tensor exactly: any size or offset
    difference would show on a random image."""
    rng = np.random.default_rng(0)
    for crop_pct in CROP_PCTS:
        source = timm_transform(96, crop_pct, mode, "nearest")
        t = zoo_transform(96, crop_pct, mode, "nearest")
        for h, w in [(120, 170), (171, 120), (60, 75), (97, 96)]:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            np.testing.assert_allclose(np.asarray(t(img)), chw(source(Image.fromarray(img))),
                                       atol=1e-5, err_msg=f"{mode} {crop_pct} {(h, w)}")


def test_nearest_pipeline_equals_torchvision_transforms_pixel_for_pixel(catalogue):
    """torchvision's ImageClassification (resize_size, crop_size) pairs of the catalogue."""
    pairs = sorted({(t.crop_size[0], t.resize_size[0]) for _, v, _, t, _ in catalogue
                    if v.source_kind == "torchvision"})
    assert (299, 342) in pairs and (224, 232) in pairs
    rng = np.random.default_rng(1)
    for crop, resize in pairs:
        source = ImageClassification(crop_size=crop, resize_size=resize,
                                     interpolation=InterpolationMode.NEAREST, **IMAGENET)
        t = EvalTransform(size=crop, resize_size=resize, interpolation="nearest")
        for h, w in [(400, 531), (531, 400), (200, 250)]:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            np.testing.assert_allclose(np.asarray(t(img)), chw(source(Image.fromarray(img))),
                                       atol=1e-5, err_msg=f"{crop}/{resize} {(h, w)}")


def test_every_catalogue_config_gives_the_sources_transform(catalogue):
    """What a conversion records in config.json gives the source's own transform: resize size,
    crop, offsets, interpolation, mean/std (torchvision's crop_pct is recorded rounded to 4
    digits: Inception v3's 299/342 must still resize to 342, not floor(...) = 341)."""
    wrong = []
    for name, variant, pre, source, size in catalogue:
        t = transform_from_config(pre, size, variant.source)
        norm = source.transforms[-1] if variant.source_kind == "timm" else source
        got = (t.interpolation, [round(m, 6) for m in t.mean], [round(s, 6) for s in t.std])
        want = (source.transforms[0].interpolation.value if variant.source_kind == "timm"
                else source.interpolation.value,
                [round(float(m), 6) for m in norm.mean], [round(float(s), 6) for s in norm.std])
        if variant.source_kind == "timm":
            geo_ok = all(ours(t, h, w) == source_geometry(source, h, w)   # the grid has the rest
                         for h, w in [(480, 640), (501, 333), (100, 150)])
        else:
            geo_ok = (t.size, t.resize_size) == (source.crop_size[0], source.resize_size[0])
        if got != want or not geo_ok:
            wrong.append((name, t, source))
    assert not wrong, wrong[:3]


def _levels(a, b, std):
    """|a - b| of two normalised HWC images in 0..255 grey levels."""
    return np.abs(np.asarray(a) - np.asarray(b)) * np.asarray(std) * 255


# Measured on the four photos (max, mean grey levels of 255) against PIL: bilinear 1.0, 0.18;
# bicubic 7.0, 0.20 (PIL resamples in fixed point, TF and torch in float). Against torchvision's
# tensor path (torch's antialiased resize of uint8 tensors) the same pipelines differ in about one
# value in 8000, by one level (rounding ties). A wrong offset or kernel costs tens of levels.
BOUNDS = {"bilinear": (1.01, 0.25), "bicubic": (8.0, 0.25)}
TENSOR_PATH_BOUNDS = (1.01, 1e-3)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_pixels_within_the_pil_vs_tf_resize_difference(interpolation):
    worst = mean = 0.0
    for crop_pct, mode in [(0.875, "center"), (0.95, "center"), (1.0, "squash"), (0.9, "border")]:
        source = timm_transform(224, crop_pct, mode, interpolation)
        t = zoo_transform(224, crop_pct, mode, interpolation)
        for img in photos().values():
            d = _levels(t(img), chw(source(Image.fromarray(img))), IMAGENET["std"])
            worst, mean = max(worst, d.max()), max(mean, d.mean())
    tv = ImageClassification(crop_size=224, resize_size=232, interpolation=InterpolationMode(
        interpolation), **IMAGENET)
    t = EvalTransform(224, 232, interpolation=interpolation)
    tensor_worst = tensor_mean = 0.0
    for img in photos().values():
        d = _levels(t(img), chw(tv(Image.fromarray(img))), IMAGENET["std"])
        worst, mean = max(worst, d.max()), max(mean, d.mean())
        d = _levels(t(img), chw(tv(torch.from_numpy(img).permute(2, 0, 1))), IMAGENET["std"])
        tensor_worst, tensor_mean = max(tensor_worst, d.max()), max(tensor_mean, d.mean())
    assert worst <= BOUNDS[interpolation][0] and mean <= BOUNDS[interpolation][1], (worst, mean)
    assert tensor_worst <= TENSOR_PATH_BOUNDS[0] and tensor_mean <= TENSOR_PATH_BOUNDS[1], \
        (tensor_worst, tensor_mean)


def test_runs_inside_tf_data_on_images_of_different_sizes():
    import tensorflow as tf

    t = zoo_transform(64, 0.875, "center", "bicubic")
    imgs = [img[::3, ::3] for img in photos().values()]
    ds = tf.data.Dataset.from_generator(lambda: iter(imgs),
                                        output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    batch = next(iter(ds.map(t).batch(len(imgs))))
    assert batch.shape == (len(imgs), 64, 64, 3)
    for got, img in zip(batch.numpy(), imgs):
        np.testing.assert_allclose(got, np.asarray(t(img)), atol=1e-6)
    # float images in [0, 1] are the same pixels as uint8 ones
    np.testing.assert_allclose(np.asarray(t(imgs[0].astype(np.float32) / 255)),
                               np.asarray(t(imgs[0])), atol=1e-5)
    # batched NHWC gives each image's result
    pair = np.stack([imgs[1], imgs[1][:, ::-1]])
    np.testing.assert_allclose(np.asarray(t(pair))[1], np.asarray(t(pair[1])), atol=1e-6)
    with pytest.raises(zoo.ZooError, match="HWC or NHWC"):
        t(np.zeros((4, 4), np.uint8))


def _logits_agreement(keras_logits, torch_logits):
    k, r = np.asarray(keras_logits), np.asarray(torch_logits)
    rel = float(np.abs(k - r).max() / np.abs(r).max())
    top1 = float(np.mean(k.argmax(1) == r.argmax(1)))
    top5 = float(np.mean([len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5
                          for a, b in zip(k, r)]))
    return rel, top1, top5


def end_to_end(name, keras_model, module, pre, size, source):
    """image -> logits on the photos, as (max rel error, top-1 agreement, top-5 overlap) against
    the PyTorch pipeline (the source's own eval transform on PIL images + torch module):
    - "end_to_end": zoo's transform (from the recorded config) + the Keras model;
    - "model": the Keras model on the PyTorch pipeline's tensors (conversion parity alone);
    - "preprocessing": the torch module on zoo's tensors (preprocessing alone);
    - "torch_tensor_path": the torch module on torchvision's own tensor path (uint8 tensors
      resized by torch with antialias instead of PIL): the spread PyTorch itself has."""
    if source.startswith("timm:"):
        tt = create_transform(**resolve_data_config({"input_size": (3, size, size)}, model=module))
        interpolation = tt.transforms[0].interpolation
    else:
        variant, tag = get_variant(name)
        tv = sources._tv_weights_enum(variant, tag).transforms()
        tt = ImageClassification(crop_size=size, resize_size=round(
            tv.resize_size[0] * size / tv.crop_size[0]), interpolation=tv.interpolation,
            mean=tv.mean, std=tv.std)
        interpolation = tv.interpolation
    t = transform_from_config(pre, size, source)
    tensor_path = ImageClassification(crop_size=size, resize_size=t.resize_size,
                                      interpolation=interpolation, mean=t.mean, std=t.std)
    imgs = list(photos().values())
    x_torch = torch.stack([tt(Image.fromarray(i)) for i in imgs])
    x_zoo = [np.asarray(t(i)) for i in imgs]
    x_tensor = torch.stack([tensor_path(torch.from_numpy(i).permute(2, 0, 1)) for i in imgs])
    with torch.no_grad():
        ref = module(x_torch).numpy()
        on_zoo = module(torch.from_numpy(np.stack(x_zoo)).permute(0, 3, 1, 2)).numpy()
        on_tensor = module(x_tensor).numpy()
    keras_zoo = np.concatenate([np.asarray(keras_model(x[None])) for x in x_zoo])
    keras_torch = np.asarray(keras_model(x_torch.permute(0, 2, 3, 1).numpy()))
    return {"end_to_end": _logits_agreement(keras_zoo, ref),
            "model": _logits_agreement(keras_torch, ref),
            "preprocessing": _logits_agreement(on_zoo, ref),
            "torch_tensor_path": _logits_agreement(on_tensor, ref)}


def test_photo_to_logits_agrees_with_the_pytorch_pipeline(converted, torch_model):
    """timm/resnet18 (bicubic, crop_pct 0.95) at SMALL px with the perturbed weights."""
    out_dir, _ = converted("timm/resnet18")
    cfg = json.loads((out_dir / "config.json").read_text())
    model = zoo.create_model("timm/resnet18", pretrained=out_dir)
    figures = end_to_end("timm/resnet18", model, torch_model("timm/resnet18"),
                         cfg["preprocessing"], SMALL, cfg["source"])
    rel, top1, _ = figures["end_to_end"]
    # zoo's pipeline moves the logits no more than PyTorch's own tensor path does (measured at
    # SMALL: both 2.6e-3, top-1 1.0); a wrong crop offset or a missing /std costs 1e-1 and more
    assert figures["model"][0] < 1e-4, figures
    assert rel <= 1.2 * figures["torch_tensor_path"][0] + 1e-4 and top1 == 1.0, figures


def test_include_preprocessing_is_preprocess_then_model(converted, tmp_path):
    import keras

    out_dir, _ = converted("timm/resnet18")
    model = zoo.create_model("timm/resnet18", pretrained=out_dir / "model.weights.h5",
                             include_preprocessing=True)
    assert model.get_layer("center_crop").size == SMALL   # the converted config's, not the recipe's
    bare = zoo.create_model("timm/resnet18", pretrained=out_dir)
    img = photos()["coffee"]
    expected = np.asarray(bare(zoo.preprocess(out_dir, img[None])))
    np.testing.assert_allclose(np.asarray(model(img[None])), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.predict(img[None].astype(np.float32), verbose=0), expected,
                               rtol=1e-5, atol=1e-5)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(again(img[None])), expected, rtol=1e-5, atol=1e-5)


def test_decode_predictions_uses_the_recorded_class_names(converted, tmp_path):
    out_dir, _ = converted("timm/resnet18")
    with pytest.raises(zoo.ZooError, match="no class names are recorded"):
        zoo.decode_predictions(np.zeros((1, 1000)), out_dir)
    with pytest.raises(zoo.ZooError, match="converted model's config.json"):
        zoo.decode_predictions(np.zeros((1, 1000)), "timm/resnet18")
    named = tmp_path / "named"
    shutil.copytree(out_dir, named)
    cfg = json.loads((named / "config.json").read_text())
    cfg["class_names"] = [f"class {i}" for i in range(1000)]
    (named / "config.json").write_text(json.dumps(cfg))
    logits = np.zeros((2, 1000))
    logits[0, [7, 3]] = [5.0, 4.0]
    logits[1, 999] = 1.0
    top = zoo.decode_predictions(logits, named, top=2)
    assert [[(i, n) for i, n, _ in row] for row in top] == \
        [[(7, "class 7"), (3, "class 3")], [(999, "class 999"), (0, "class 0")]]
    e = math.exp(5.0)
    assert top[0][0][2] == pytest.approx(e / (e + math.exp(4.0) + 998))
    with pytest.raises(zoo.ZooError, match="shape"):
        zoo.decode_predictions(np.zeros((1, 10)), named)

