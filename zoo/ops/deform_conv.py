"""`torchvision.ops.deform_conv2d` (DCN v1, and v2 with a mask) in TensorFlow, NHWC.

Semantics of torchvision's kernel (csrc/ops/cpu/deform_conv2d_kernel.cpp), kept here:
- kernel tap (i, j) of output pixel (ho, wo) samples the input at
  y = ho * stride_h - pad_h + i * dilation_h + dy,  x = wo * stride_w - pad_w + j * dilation_w + dx,
  with (dy, dx) = offset channels (2k, 2k + 1) of its offset group, k = i * kw + j;
- the input channels split into offset_groups consecutive groups, each with its own offsets (and
  mask channels g * kh * kw + k); offset_groups is offset channels / (2 * kh * kw), as torchvision;
- bilinear sampling in pixel coordinates where every pixel outside the image reads 0 (a sample
  with y <= -1, y >= H, x <= -1 or x >= W is 0): offsets may point anywhere;
- each sample is multiplied by its mask value (v2), then an ordinary (grouped) convolution
  of the sampled columns with the weight, plus the bias.
The sampled columns are a (B, Ho, Wo, kh * kw, C) tensor (im2col), contracted with the kernel by
one einsum; nothing loops over data in Python.
"""
import tensorflow as tf

from zoo.ops._shapes import dims, expand


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _sample(x, y, xs, mask, offset_groups, taps):
    """Zero-padded bilinear samples of x (B, H, W, C) at float pixel coordinates y, xs of shape
    (B, P, G * K) (P output pixels, tap k of offset group g at g * K + k), times `mask` of that
    shape unless None -> (B, P, K, G, C // G). No tensor has more than 5 axes: TFLite's strided
    slice and transpose stop there. The mask is applied here, in the samples' (B, G, P*K) layout:
    a transposed mask multiplied after the final transpose made tf2onnx emit a wrong Reshape."""
    b, h, w, c = dims(x)
    g, k = offset_groups, taps
    # (B, G, H*W, Cg): each offset group gathers from its own channels
    grouped = tf.transpose(tf.reshape(x, [b, h * w, g, c // g]), [0, 2, 1, 3])

    def per_group(t):   # (B, P, G*K) -> (B, G, P*K)
        return tf.reshape(tf.transpose(tf.reshape(t, [b, -1, g, k]), [0, 2, 1, 3]), [b, g, -1])

    y, xs = per_group(y), per_group(xs)
    y0, x0 = tf.floor(y), tf.floor(xs)
    ly, lx = y - y0, xs - x0
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)

    def tap(yi, xi, weight):
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        index = tf.clip_by_value(yi, 0, h - 1) * w + tf.clip_by_value(xi, 0, w - 1)
        weight = tf.where(inside, weight, tf.zeros_like(weight))
        return expand(weight, -1) * tf.gather(grouped, index, batch_dims=2)

    val = (tap(y0, x0, (1 - ly) * (1 - lx)) + tap(y0, x0 + 1, (1 - ly) * lx)
           + tap(y0 + 1, x0, ly * (1 - lx)) + tap(y0 + 1, x0 + 1, ly * lx))
    if mask is not None:   # torch: the interpolated value times the mask
        val = val * expand(per_group(mask), -1)
    # (B, G, P*K, Cg) -> (B, G, P, K, Cg) -> (B, P, K, G, Cg)
    return tf.transpose(tf.reshape(val, [b, g, -1, k, c // g]), [0, 2, 3, 1, 4])


def deform_conv2d(x, offset, kernel, bias=None, stride=1, padding=0, dilation=1, mask=None,
                  groups=1):
    """torchvision.ops.deform_conv2d on NHWC tensors.

    x (B, H, W, Cin); offset (B, Ho, Wo, 2 * offset_groups * kh * kw) and mask (B, Ho, Wo,
    offset_groups * kh * kw) in torch's channel order; kernel in Keras layout (kh, kw, Cin //
    groups, Cout) (torch's weight through the `conv2d` transform); bias (Cout,) or None.
    Returns (B, Ho, Wo, Cout)."""
    x = tf.convert_to_tensor(x)
    offset = tf.convert_to_tensor(offset, x.dtype)
    kh, kw, cin_g, cout = kernel.shape
    k = kh * kw
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    offset_groups = offset.shape[-1] // (2 * k)
    b, ho, wo, _ = dims(offset)
    # base sampling positions (Ho, K) and (Wo, K) of tap k = i * kw + j, repeated per offset group
    taps_i, taps_j = tf.meshgrid(tf.range(kh), tf.range(kw), indexing="ij")
    base_y = tf.tile(expand(tf.range(ho), 1) * sh - ph + tf.reshape(taps_i, [1, k]) * dh,
                     [1, offset_groups])
    base_x = tf.tile(expand(tf.range(wo), 1) * sw - pw + tf.reshape(taps_j, [1, k]) * dw,
                     [1, offset_groups])
    off = tf.reshape(offset, [b, ho, wo, offset_groups * k, 2])   # (dy, dx) per group and tap
    y = expand(tf.cast(base_y, x.dtype), 0, 2) + off[..., 0]     # (1, Ho, 1, G*K)
    xs = expand(tf.cast(base_x, x.dtype), 0, 0) + off[..., 1]    # (1, 1, Wo, G*K)
    flat = [b, -1, offset_groups * k]
    if mask is not None:
        mask = tf.reshape(tf.convert_to_tensor(mask, x.dtype), flat)
    cols = _sample(x, tf.reshape(y, flat), tf.reshape(xs, flat), mask, offset_groups, k)
    cols = tf.reshape(cols, [b, -1, k, groups, cin_g])   # channel g*Cg + c, in conv groups
    w = tf.reshape(tf.cast(kernel, x.dtype), [k, cin_g, groups, cout // groups])
    out = tf.reshape(tf.einsum("bpkgc,kcgo->bpgo", cols, w), [b, ho, wo, cout])
    return out if bias is None else out + tf.cast(bias, x.dtype)
