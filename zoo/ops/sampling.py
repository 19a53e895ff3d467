"""`F.grid_sample` and `F.interpolate` with PyTorch's exact semantics, on NHWC tensors.

interpolate: where TensorFlow's kernel computes the same source positions and taps as torch's, it
is used (dynamic shapes, fast); everywhere else the resize is a product with per-axis weight
matrices built in NumPy from torch's formulas (static spatial sizes):
- nearest (torch's "nearest", not "nearest-exact"): src = min(floor(dst * scale), in - 1) with
  scale = in / out in float32: TF's ResizeNearestNeighbor without half-pixel centres is this rule;
- bilinear, align_corners=False: src = max((dst + 0.5) * scale - 0.5, 0), taps floor(src) and the
  next one clamped to in - 1: TF's ResizeBilinear with half-pixel centres reads the same two pixels
  with the same weight (below 0 both taps are pixel 0 in both); align_corners=True: src = dst *
  (in - 1) / (out - 1) in both. (tf.image.resize itself would add antialiasing or A=-0.5 cubics.)
- bicubic: torch uses A = -0.75 with half-pixel centres and reads out-of-range taps at the
  clamped border index; TF's bicubic uses A = -0.5 with half-pixel centres and renormalises at the
  border instead, so it differs: weight matrices;
- antialias=True (bilinear/bicubic), align_corners=False: torch's separable filter (PIL's):
  support scaled by in/out when downsampling, taps inside the image only, weights normalised to
  sum 1, bicubic with A = -0.5 there (not -0.75). tf.image.resize(antialias=True) is this filter
  (ScaleAndTranslate with a triangle / Keys A = -0.5 kernel, scaled the same way): measured equal
  within 5e-6 up and down (tests/test_ops_sampling.py). It is used only for free spatial sizes:
  TFLite cannot run ScaleAndTranslate, not even with SELECT_TF_OPS, while the weight matrices
  (same filter, built from torch's formulas) are a matmul; align_corners=True: weight matrices.
A scale_factor whose 1/scale_factor differs from in/out in float32 (e.g. 3 px * 0.7) is applied
the way torch does (source positions from 1/scale_factor): weight matrices.

grid_sample: bilinear / nearest (round half to even, as torch's nearbyint), zeros / border
padding, align_corners both ways; grid (B, Ho, Wo, 2) holding (x, y) in [-1, 1] as torch's.
"""
import numpy as np
import tensorflow as tf

from zoo.ops._shapes import expand

_CUBIC_A = -0.75      # torch's upsample_bicubic2d (Keys' cubic, A = -0.75 as OpenCV)
_CUBIC_A_AA = -0.5    # torch's antialiased bicubic follows PIL: A = -0.5
_TAPS = {"bilinear": 2, "bicubic": 4}   # interp_size of torch's antialias kernels


def _scale(n_in, n_out, align_corners, scale_factor):
    """torch's area_pixel_compute_scale, in float32 as torch computes it for float tensors."""
    if align_corners:
        return np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
    return np.float32(1.0 / scale_factor) if scale_factor else np.float32(n_in) / np.float32(n_out)


def _cubic(t, a):
    """Keys' cubic convolution kernel at distance |t|."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t < 1, near, np.where(t < 2, far, 0.0))


def _antialias_matrix(n_in, n_out, mode, scale):
    """torch's _compute_indices_min_size_weights_aa: (n_out, n_in) weights."""
    scale = float(scale)
    support = _TAPS[mode] / 2 * (scale if scale >= 1 else 1.0)
    inv = 1.0 / scale if scale >= 1 else 1.0
    m = np.zeros((n_out, n_in))
    for i in range(n_out):   # build time, not call: NumPy on static sizes
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        t = (np.arange(lo, hi) - center + 0.5) * inv
        w = np.maximum(0.0, 1 - np.abs(t)) if mode == "bilinear" else _cubic(t, _CUBIC_A_AA)
        if w.sum() != 0:
            m[i, lo:hi] = w / w.sum()
    return m


def _matrix(n_in, n_out, mode, align_corners, antialias, scale_factor):
    """(n_out, n_in) matrix M with out = M @ in along one axis, from torch's formulas."""
    scale = _scale(n_in, n_out, align_corners, scale_factor)
    if antialias:
        return _antialias_matrix(n_in, n_out, mode, scale)
    dst = np.arange(n_out, dtype=np.float32)
    rows = np.arange(n_out)
    m = np.zeros((n_out, n_in))
    if mode == "nearest":
        m[rows, np.minimum(np.floor(dst * scale).astype(np.int64), n_in - 1)] = 1
        return m
    src = dst * scale if align_corners else (dst + np.float32(0.5)) * scale - np.float32(0.5)
    if mode == "bilinear":
        src = np.maximum(src, np.float32(0))   # torch clamps linear modes' source below at 0
        x0 = np.floor(src).astype(np.int64)
        frac = src - x0
        np.add.at(m, (rows, x0), 1 - frac)
        np.add.at(m, (rows, np.minimum(x0 + 1, n_in - 1)), frac)
        return m
    x0 = np.floor(src).astype(np.int64)
    t = (src - x0).astype(np.float64)
    for k in range(4):   # taps x0-1 .. x0+2, read at the clamped index as torch's bicubic does
        np.add.at(m, (rows, np.clip(x0 - 1 + k, 0, n_in - 1)), _cubic(t + 1 - k, _CUBIC_A))
    return m


def _tf_kernel_applies(mode, antialias, sizes, out, scale_factors):
    """True where TF's resize kernel computes torch's source positions (module docstring)."""
    if mode == "bicubic" and not antialias:
        return False
    # TF's scale is in / out in float32: equal to torch's only if torch's is too
    return all(sf is None or np.float32(1.0 / sf) == np.float32(n) / np.float32(o)
               for n, o, sf in zip(sizes, out, scale_factors))


def interpolate(x, size=None, scale_factor=None, mode="bilinear", align_corners=False,
                antialias=False):
    """F.interpolate on NHWC `x`: `size` (h, w) or int, or `scale_factor` float or (sh, sw)."""
    if mode not in ("nearest", "bilinear", "bicubic"):
        raise ValueError(f"mode must be nearest, bilinear or bicubic, got {mode!r}")
    if mode == "nearest" and (align_corners or antialias):
        raise ValueError("nearest takes neither align_corners nor antialias (as in torch)")
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size and scale_factor")
    x = tf.convert_to_tensor(x)
    sizes = tuple(x.shape[1:3])
    if scale_factor is not None:
        factors = tuple(scale_factor) if np.iterable(scale_factor) else (scale_factor,) * 2
        if None in sizes:
            raise ValueError("scale_factor needs static spatial sizes")
        out = tuple(int(np.floor(n * f)) for n, f in zip(sizes, factors))
    else:
        factors = (None, None)
        out = tuple(size) if np.iterable(size) else (size, size)
    static = None not in sizes
    if (_tf_kernel_applies(mode, antialias, sizes, out, factors)
            and not (antialias and (align_corners or static))):
        if antialias:
            return tf.cast(tf.image.resize(x, out, method=mode, antialias=True), x.dtype)
        if mode == "nearest":
            return tf.raw_ops.ResizeNearestNeighbor(images=x, size=out, align_corners=False,
                                                    half_pixel_centers=False)
        return tf.cast(tf.raw_ops.ResizeBilinear(images=x, size=out, align_corners=align_corners,
                                                 half_pixel_centers=not align_corners), x.dtype)
    if not static:
        raise ValueError(f"{mode} (antialias={antialias}) needs static spatial sizes")
    mh, mw = (tf.constant(_matrix(n, o, mode, align_corners, antialias, f), x.dtype)
              for n, o, f in zip(sizes, out, factors))
    # width first, then height: torch's separable antialias passes run in that order
    y = tf.einsum("bhwc,vw->bhvc", x, mw)
    return tf.einsum("bhwc,uh->buwc", y, mh)


def _unnormalize(coord, size, align_corners):
    """torch's grid_sampler_unnormalize: [-1, 1] -> pixel coordinates."""
    size = tf.cast(size, coord.dtype)
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def _gather(flat, width, height, ix, iy):
    """Pixels of flat (B, H*W, C) at integer (ix, iy) of shape (B, P); zero outside the image."""
    inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    index = tf.clip_by_value(iy, 0, height - 1) * width + tf.clip_by_value(ix, 0, width - 1)
    return tf.gather(flat, index, batch_dims=1) * expand(tf.cast(inside, flat.dtype), -1)


def grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False):
    """F.grid_sample on NHWC `x` (B, H, W, C) at `grid` (B, Ho, Wo, 2) -> (B, Ho, Wo, C)."""
    if mode not in ("bilinear", "nearest") or padding_mode not in ("zeros", "border"):
        raise ValueError(f"unsupported mode {mode!r} / padding_mode {padding_mode!r}")
    x = tf.convert_to_tensor(x)
    grid = tf.convert_to_tensor(grid, x.dtype)
    shape = tf.shape(x)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    out_shape = tf.concat([tf.shape(grid)[:3], [c]], 0)
    flat = tf.reshape(x, [b, h * w, c])
    gx = tf.reshape(_unnormalize(grid[..., 0], w, align_corners), [b, -1])
    gy = tf.reshape(_unnormalize(grid[..., 1], h, align_corners), [b, -1])
    if padding_mode == "border":
        gx = tf.clip_by_value(gx, 0, tf.cast(w - 1, x.dtype))
        gy = tf.clip_by_value(gy, 0, tf.cast(h - 1, x.dtype))
    if mode == "nearest":   # tf.round rounds half to even, as torch's std::nearbyint
        y = _gather(flat, w, h, tf.cast(tf.round(gx), tf.int32), tf.cast(tf.round(gy), tf.int32))
        return tf.reshape(y, out_shape)
    x0, y0 = tf.floor(gx), tf.floor(gy)
    fx, fy = expand(gx - x0, -1), expand(gy - y0, -1)
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    y = ((1 - fx) * (1 - fy) * _gather(flat, w, h, x0, y0)
         + fx * (1 - fy) * _gather(flat, w, h, x0 + 1, y0)
         + (1 - fx) * fy * _gather(flat, w, h, x0, y0 + 1)
         + fx * fy * _gather(flat, w, h, x0 + 1, y0 + 1))
    return tf.reshape(y, out_shape)
