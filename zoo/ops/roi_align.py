"""`torchvision.ops.roi_align` and `MultiScaleRoIAlign` in TensorFlow, on NHWC feature maps.

roi_align follows torchvision's CPU kernel (csrc/ops/cpu/roi_align_kernel.cpp, float32 as torch):
- a box (batch_index, x1, y1, x2, y2) is scaled by spatial_scale and shifted by -0.5 when
  aligned=True; with aligned=False its width/height are forced to at least 1 (no shift);
- each of the output_size bins averages a grid of sampling_ratio x sampling_ratio bilinear samples,
  or, for sampling_ratio <= 0, ceil(roi_height / pooled_height) x ceil(roi_width / pooled_width)
  samples chosen per box (a box whose grid is empty gives 0);
- a sample with y outside [-1, H] or x outside [-1, W] contributes 0; otherwise coordinates below
  0 are clamped to 0 and the taps at or past the last row/column collapse onto it;
- the batch index is truncated to an integer, as the kernel's `int` cast does.
Vectorised over boxes and bins: a tf.while_loop runs over the sample positions of the largest
per-box grid (samples beyond a box's own grid are masked), so memory is K * bins * C per step.
"""
import tensorflow as tf

from zoo.ops._shapes import expand


def _pair(size):
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def _rois(boxes, dtype):
    """Tensor[K, 5] as is; a list of per-image Tensor[L_i, 4] -> (i, x1, y1, x2, y2) rows."""
    if isinstance(boxes, (list, tuple)):
        rows = [tf.concat([tf.fill([tf.shape(b)[0], 1], tf.cast(i, dtype)), tf.cast(b, dtype)], 1)
                for i, b in enumerate(boxes)]
        return tf.concat(rows, 0) if rows else tf.zeros([0, 5], dtype)
    return tf.cast(boxes, dtype)


def _axis(start, bin_size, grid, index, size, pooled):
    """Sample coordinates along one axis for sample `index` of each bin: (K, pooled) low/high taps,
    their weights and the in-range mask, following torch's pre_calc_for_bilinear_interpolate."""
    dtype = start.dtype
    p = expand(tf.cast(tf.range(pooled), dtype), 0)
    grid_f = expand(tf.cast(grid, dtype), 1)
    # torch: start + p * bin + (index + .5) * bin / grid, evaluated left to right
    bin_col = expand(bin_size, 1)
    c = expand(start, 1) + p * bin_col + (tf.cast(index, dtype) + 0.5) * bin_col / grid_f
    size_f = tf.cast(size, dtype)
    inside = (c >= -1.0) & (c <= size_f)
    c = tf.maximum(c, 0.0)
    low = tf.cast(c, tf.int32)   # c >= 0: truncation is floor
    last = low >= size - 1
    low = tf.where(last, size - 1, low)
    high = tf.where(last, size - 1, low + 1)
    c = tf.where(last, tf.cast(low, dtype), c)
    frac = c - tf.cast(low, dtype)
    return low, high, 1.0 - frac, frac, inside


def roi_align(x, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """torchvision.ops.roi_align on NHWC `x` (B, H, W, C) -> (K, ph, pw, C).

    boxes: Tensor[K, 5] (batch_index, x1, y1, x2, y2) or a list of Tensor[L_i, 4] per image."""
    x = tf.convert_to_tensor(x)
    return _roi_align(x, _rois(boxes, x.dtype), *_pair(output_size), spatial_scale,
                      sampling_ratio, aligned)


# A graph even when called eagerly: an eager tf.while_loop runs op by op from Python (seconds).
@tf.function(reduce_retracing=True)
def _roi_align(x, rois, ph, pw, spatial_scale, sampling_ratio, aligned):
    dtype = x.dtype
    shape = tf.shape(x)
    height, width, channels = shape[1], shape[2], shape[3]
    flat = tf.reshape(x, [-1, channels])

    batch = tf.cast(rois[:, 0], tf.int32)   # truncation, as the kernel's int cast
    offset = 0.5 if aligned else 0.0
    scale = tf.cast(spatial_scale, dtype)
    x1, y1, x2, y2 = (rois[:, i] * scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:   # torch forces malformed boxes to 1 x 1
        roi_w, roi_h = tf.maximum(roi_w, 1.0), tf.maximum(roi_h, 1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = grid_w = tf.fill(tf.shape(batch), sampling_ratio)
    else:
        grid_h = tf.cast(tf.math.ceil(roi_h / ph), tf.int32)
        grid_w = tf.cast(tf.math.ceil(roi_w / pw), tf.int32)
    count = expand(tf.cast(tf.maximum(grid_h * grid_w, 1), dtype), 1, 2, 3)
    max_h, max_w = _max0(grid_h), _max0(grid_w)
    base = expand(batch * height * width, 1, 2)

    def step(s, total):
        iy, ix = s // max_w, s % max_w
        yl, yh, hy, ly, in_y = _axis(y1, bin_h, grid_h, iy, height, ph)
        xl, xh, hx, lx, in_x = _axis(x1, bin_w, grid_w, ix, width, pw)
        used = (iy < grid_h) & (ix < grid_w)   # samples past this box's own grid
        mask = expand(expand(in_y, 2) & expand(in_x, 1) & expand(used, 1, 2), -1)
        rows_l, rows_h = base + expand(yl, 2) * width, base + expand(yh, 2) * width

        def tap(rows, cols, w):
            return expand(w, -1) * tf.gather(flat, rows + expand(cols, 1))

        hy, ly, hx, lx = expand(hy, 2), expand(ly, 2), expand(hx, 1), expand(lx, 1)
        val = (tap(rows_l, xl, hy * hx) + tap(rows_l, xh, hy * lx)
               + tap(rows_h, xl, ly * hx) + tap(rows_h, xh, ly * lx))
        return s + 1, total + tf.where(mask, val, tf.zeros_like(val))

    total = tf.zeros(tf.stack([tf.shape(rois)[0], ph, pw, channels]), dtype)
    _, total = tf.while_loop(lambda s, _: s < max_h * max_w, step, (tf.constant(0), total))
    return total / count


def _max0(v):
    """Largest entry of an int vector, 0 for an empty one."""
    return tf.reduce_max(tf.concat([v, [0]], 0))


class MultiScaleRoIAlign:
    """torchvision.ops.MultiScaleRoIAlign: each box is pooled from one FPN level.

    As torchvision: the features used are the entries of the dict whose key is in featmap_names,
    in the dict's order; each level's scale is 2 ** round(log2(feature height / largest image
    height)) (log2 in float32); the levels k_min..k_max are -log2 of the first and last scale;
    a box goes to level floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps),
    clamped to [k_min, k_max] (eps = 1e-6, all in float32); pooling is roi_align with
    aligned=False. Scales come from the feature shapes at call time (free sizes work)."""

    def __init__(self, featmap_names, output_size, sampling_ratio, *, canonical_scale=224,
                 canonical_level=4, eps=1e-6):
        self.featmap_names = list(featmap_names)
        self.output_size = _pair(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale, self.canonical_level, self.eps = canonical_scale, canonical_level, eps

    def __call__(self, features, boxes, image_shapes):
        """features: dict name -> NHWC map; boxes: list of Tensor[L_i, 4] (image coordinates);
        image_shapes: list of (height, width) -> (K, ph, pw, C), boxes in concatenated order."""
        maps = [v for k, v in features.items() if k in self.featmap_names]
        image_h = max(int(s[0]) for s in image_shapes)   # torch uses the first axis only
        scales = [2.0 ** tf.round(tf.math.log(tf.cast(tf.shape(m)[1], tf.float32) / image_h)
                                  / tf.math.log(2.0)) for m in maps]
        rois = _rois(boxes, maps[0].dtype)
        if len(maps) == 1:
            return roi_align(maps[0], rois, self.output_size, scales[0], self.sampling_ratio)
        k_min = tf.cast(-_log2(scales[0]), tf.int32)    # int() of the float level: truncation
        k_max = tf.cast(-_log2(scales[-1]), tf.int32)
        area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
        level = tf.floor(self.canonical_level + _log2(tf.sqrt(area) / self.canonical_scale)
                         + tf.constant(self.eps, area.dtype))
        level = tf.cast(tf.clip_by_value(level, tf.cast(k_min, area.dtype),
                                         tf.cast(k_max, area.dtype)), tf.int32) - k_min
        picks, pooled = [], []
        for i, (m, scale) in enumerate(zip(maps, scales)):   # levels: structure, not data
            pick = tf.cast(tf.where(tf.equal(level, i))[:, 0], tf.int32)
            picks.append(pick)
            pooled.append(roi_align(m, tf.gather(rois, pick), self.output_size, scale,
                                    self.sampling_ratio))
        # every box is in exactly one level, so the stitched result has one row per box
        return tf.dynamic_stitch(picks, pooled)


def _log2(v):
    return tf.math.log(v) / tf.math.log(tf.constant(2.0, v.dtype))
