"""The source's evaluation transform, in TensorFlow: resize, centre crop (or pad), scale, normalise.

Geometry (resized size, padding, crop offsets) is identical to timm's
`create_transform(**resolve_data_config(...))` and torchvision's weight `transforms()`
(`ImageClassification`): the same integer rules, evaluated in the graph from the image's dynamic
shape, so the transform runs inside `tf.data.Dataset.map` and inside a Keras model
(zoo.layers.preprocessing). Pixel values differ from the PyTorch pipeline only by the resampling
kernels (TF's `scale_and_translate` vs PIL's): see `tests/test_preprocess.py` for the measured
bound and the README for the effect on logits.

Named `preprocessing` and not `preprocess` on purpose: `zoo.preprocess` is the public function,
and importing a submodule of that name would replace it with the module.

Never imports torch (the Keras-only side).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import ZooError

CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class EvalTransform:
    """One model's evaluation transform. Call it on images (a tf.Tensor or array).

    size: the square output (crop) size. resize_size: the resize target, which the crop mode reads
    as timm/torchvision do:
    - "center": the shorter side becomes resize_size, the longer one keeps the aspect ratio
      (torchvision `Resize(int)`: `int(resize_size * long / short)`), then a centre crop;
    - "squash": both sides become resize_size (aspect ratio lost), then a centre crop;
    - "border": the longer side becomes resize_size (timm `ResizeKeepRatio(longest=1)`), then a
      centre crop, padding short sides with the mean colour (timm `CenterCropOrPad`).
    The centre crop pads with black where the image is smaller than the crop and rounds its offset
    half to even, as torchvision's `center_crop` does (Python's `round`).
    """
    size: int
    resize_size: int
    crop_mode: str = "center"
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        if self.crop_mode not in CROP_MODES:
            raise ZooError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ZooError(f"interpolation must be one of {INTERPOLATIONS}, "
                           f"got {self.interpolation!r}")
        if int(self.size) < 1 or int(self.resize_size) < 1:
            raise ZooError(f"size and resize_size must be >= 1, got {self.size}, {self.resize_size}")
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ZooError(f"mean {self.mean} and std {self.std} must have the same length and "
                           f"std > 0")

    @property
    def fill(self) -> tuple[int, ...]:
        """Padding colour in 0..255: timm's border mode pads with round(255 * mean); torchvision's
        centre crop with black."""
        if self.crop_mode == "border":
            return tuple(round(255 * m) for m in self.mean)
        return (0,) * len(self.mean)

    def geometry(self, height, width):
        """(resized_h, resized_w, pad_top, pad_left, crop_top, crop_left) as int32 tensors for an
        image of (height, width); padding is applied to the resized image, the crop to the padded
        one. Works on Python ints (eager) and on dynamic shapes (graph)."""
        rh, rw = resized_size(height, width, self.resize_size, self.crop_mode)
        return (rh, rw, *_crop_box(rh, rw, int(self.size)))

    def __call__(self, images):
        """uint8 images in 0..255 or float images in [0, 1] (the `tf.image` convention), HWC or
        NHWC -> normalised float32 of the same rank, size x size."""
        import tensorflow as tf

        images = tf.convert_to_tensor(images)
        scale = 1.0 if images.dtype == tf.uint8 else 255.0
        x = resize(tf.cast(images, tf.float32) * scale, self.resize_size, self.crop_mode,
                   self.interpolation)
        return normalise(center_crop(x, self.size, self.fill), self.mean, self.std)


def resized_size(height, width, resize_size: int, crop_mode: str = "center"):
    """(h, w) int32 tensors: the size the source's resize gives an image of (height, width)."""
    import tensorflow as tf

    return _resized_size(tf.cast(height, tf.int32), tf.cast(width, tf.int32), int(resize_size),
                         crop_mode)


def resize(images, resize_size: int, crop_mode: str = "center", interpolation: str = "bilinear"):
    """Resize float images in 0..255 (HWC or NHWC) as the source does before its centre crop; the
    result is rounded to integers in 0..255 like PIL's uint8 output."""
    import tensorflow as tf

    x, batched = _as_batch(images)
    shape = tf.shape(x)
    rh, rw = resized_size(shape[1], shape[2], resize_size, crop_mode)
    if interpolation == "nearest":
        # TF's nearest samples floor((i + 0.5) * scale) in float32 and picks another source pixel
        # than PIL for about one output size in five; PIL's rule is exact and cheap to reproduce.
        x = tf.gather(x, _pil_nearest_index(shape[1], rh), axis=1)
        x = tf.gather(x, _pil_nearest_index(shape[2], rw), axis=2)
    else:
        # antialias=True makes TF scale its kernel with the downscale factor like PIL (and
        # torchvision with antialias=True); its cubic is Keys' a=-0.5, PIL's BICUBIC.
        x = tf.image.resize(x, tf.stack([rh, rw]), method=interpolation, antialias=True)
    # PIL resamples uint8 images and writes uint8: clip the cubic overshoot and round as it does
    # (measured: this halves the mean difference to PIL and cuts the bicubic maximum from 15 to 5).
    x = tf.round(tf.clip_by_value(x, 0.0, 255.0))
    return x if batched else x[0]


def center_crop(images, size: int, fill=0):
    """Centre crop to size x size, first padding with `fill` (0..255, one value or one per
    channel) where the image is smaller than the crop, as torchvision's `center_crop` / timm's
    `center_crop_or_pad` do."""
    import tensorflow as tf

    x, batched = _as_batch(images)
    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    size = int(size)
    pad_top, pad_left, top, left = _crop_box(h, w, size)
    pad_bottom = tf.maximum(size - h, 0) - pad_top
    pad_right = tf.maximum(size - w, 0) - pad_left
    fill = tf.constant(fill, tf.float32)
    # tf.pad pads with one constant: shift the fill colour to 0, pad, shift back (exact: pixel
    # values are integers after `resize`).
    paddings = tf.stack([[0, 0], [pad_top, pad_bottom], [pad_left, pad_right], [0, 0]])
    x = tf.pad(x - fill, paddings) + fill
    x = tf.slice(x, tf.stack([0, top, left, 0]), tf.stack([-1, size, size, -1]))
    x = tf.ensure_shape(x, [None, size, size, images.shape[-1]])
    return x if batched else x[0]


def normalise(images, mean, std):
    """0..255 -> (x / 255 - mean) / std, per channel (torchvision's ToTensor + Normalize)."""
    import tensorflow as tf

    return (images / 255.0 - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _as_batch(images):
    rank = images.shape.rank
    if rank not in (3, 4):
        raise ZooError(f"images must be HWC or NHWC, got shape {tuple(images.shape)}")
    return (images, True) if rank == 4 else (images[None], False)


def _pil_nearest_index(n_in, n_out):
    """Source index of each output pixel in PIL's nearest resize (ImagingScaleAffine): a float64
    position starting at scale / 2 and incremented by scale = n_in / n_out, truncated. The
    running sum is the same sequence of float64 additions as PIL's loop, so rounding agrees too
    (checked against PIL over thousands of size pairs)."""
    import tensorflow as tf

    scale = tf.cast(n_in, tf.float64) / tf.cast(n_out, tf.float64)
    steps = tf.concat([[scale / 2], tf.fill([n_out - 1], scale)], axis=0)
    return tf.minimum(tf.cast(tf.math.cumsum(steps), tf.int32), n_in - 1)


def _resized_size(h, w, resize_size, crop_mode):
    import tensorflow as tf

    if crop_mode == "squash":
        return tf.constant(resize_size), tf.constant(resize_size)
    f64 = tf.float64
    if crop_mode == "border":
        # timm ResizeKeepRatio(longest=1.0): ratio = max(h / R, w / R); sides round(x / ratio).
        # Same float64 operations as Python; tf.round rounds half to even like Python's round.
        ratio = tf.maximum(tf.cast(h, f64) / resize_size, tf.cast(w, f64) / resize_size)
        return (tf.cast(tf.round(tf.cast(h, f64) / ratio), tf.int32),
                tf.cast(tf.round(tf.cast(w, f64) / ratio), tf.int32))
    # torchvision _compute_resized_output_size: short side -> R, long -> int(R * long / short)
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    new_long = tf.cast(tf.floor(tf.cast(resize_size * long, f64) / tf.cast(short, f64)), tf.int32)
    portrait = w <= h
    return (tf.where(portrait, new_long, resize_size), tf.where(portrait, resize_size, new_long))


def _pad_and_offset(side, size):
    """torchvision center_crop along one side: pad (size - side) // 2 before (and the rest after)
    when the side is shorter than the crop, then offset round((padded - size) / 2) half to even."""
    import tensorflow as tf

    short_by = tf.maximum(size - side, 0)
    excess = tf.maximum(side - size, 0)            # padded side - size
    offset = excess // 2 + tf.cast(excess % 4 == 3, tf.int32)   # x.5 rounds to the even neighbour
    return short_by // 2, offset


def _crop_box(h, w, size):
    pad_top, top = _pad_and_offset(h, size)
    pad_left, left = _pad_and_offset(w, size)
    return pad_top, pad_left, top, left


def transform_from_config(preprocessing: dict, size: int, source: str = "",
                          recorded_size: int | None = None) -> EvalTransform:
    """The transform a `config.json` "preprocessing" entry (or a recipe variant's) describes.

    resize_size: the recorded `resize_size` when present (and `size` is the size it was recorded
    for); else timm's `math.floor(size / crop_pct)`; for torchvision sources `round(...)`, because
    their `crop_pct` is recorded as round(crop_size / resize_size, 4) from the weight's
    `transforms()` and round() recovers torchvision's integer resize_size (floor would give 341
    for Inception v3's 342).
    """
    pre = preprocessing
    crop_pct = float(pre.get("crop_pct") or 0.875)   # timm's DEFAULT_CROP_PCT when unset
    if pre.get("resize_size") and size == (recorded_size or size):
        resize_size = int(pre["resize_size"])
    elif source.startswith("torchvision:"):
        resize_size = round(size / crop_pct)
    else:
        resize_size = math.floor(size / crop_pct)
    return EvalTransform(size=int(size), resize_size=resize_size,
                         crop_mode=pre.get("crop_mode") or "center",
                         interpolation=pre.get("interpolation", "bilinear"),
                         mean=tuple(float(m) for m in pre["mean"]),
                         std=tuple(float(s) for s in pre["std"]))


def eval_transform(name_or_dir, size: int | None = None) -> EvalTransform:
    """The evaluation transform of a converted model (`outputs/<name>` folder or its
    `.weights.h5`: the config.json beside it) or of a catalogue name (its recipe variant)."""
    path = Path(name_or_dir)
    if path.name.endswith(".weights.h5"):
        path = path.parent
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
        pre, recorded, source = cfg["preprocessing"], cfg["input_size"], cfg.get("source", "")
    else:
        from zoo import catalog

        variant, _ = catalog.get_variant(str(name_or_dir))
        pre, recorded, source = variant.preprocessing, variant.input_size, variant.source
    return transform_from_config(pre, size or recorded, source, recorded_size=recorded)
