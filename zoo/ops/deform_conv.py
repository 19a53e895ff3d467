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


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _sample(x, y, xs, offset_groups):
    """Zero-padded bilinear samples of x (B, H, W, C) at float pixel coordinates y, xs of shape
    (B, Ho, Wo, G, K) -> (B, Ho, Wo, K, G, C // G)."""
    shape = tf.shape(x)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    g = offset_groups
    # (B, G, H*W, Cg): each offset group gathers from its own channels
    grouped = tf.transpose(tf.reshape(x, [b, h * w, g, c // g]), [0, 2, 1, 3])
    pos_shape = tf.shape(y)
    y = tf.reshape(tf.transpose(y, [0, 3, 1, 2, 4]), [b, g, -1])    # (B, G, Ho*Wo*K)
    xs = tf.reshape(tf.transpose(xs, [0, 3, 1, 2, 4]), [b, g, -1])
    y0, x0 = tf.floor(y), tf.floor(xs)
    ly, lx = y - y0, xs - x0
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)

    def tap(yi, xi, weight):
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        index = tf.clip_by_value(yi, 0, h - 1) * w + tf.clip_by_value(xi, 0, w - 1)
        weight = tf.where(inside, weight, tf.zeros_like(weight))
        return weight[..., None] * tf.gather(grouped, index, batch_dims=2)

    val = (tap(y0, x0, (1 - ly) * (1 - lx)) + tap(y0, x0 + 1, (1 - ly) * lx)
           + tap(y0 + 1, x0, ly * (1 - lx)) + tap(y0 + 1, x0 + 1, ly * lx))
    # (B, G, Ho*Wo*K, Cg) -> (B, Ho, Wo, K, G, Cg)
    val = tf.reshape(val, tf.concat([[b, g], pos_shape[1:3], pos_shape[4:], [c // g]], 0))
    return tf.transpose(val, [0, 2, 3, 4, 1, 5])


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
    shape = tf.shape(offset)
    b, ho, wo = shape[0], shape[1], shape[2]
    # base sampling positions (Ho, K) and (Wo, K) of tap k = i * kw + j
    taps_i, taps_j = tf.meshgrid(tf.range(kh), tf.range(kw), indexing="ij")
    base_y = (tf.range(ho)[:, None] * sh - ph + tf.reshape(taps_i, [1, k]) * dh)
    base_x = (tf.range(wo)[:, None] * sw - pw + tf.reshape(taps_j, [1, k]) * dw)
    off = tf.reshape(offset, [b, ho, wo, offset_groups, k, 2])
    y = tf.cast(base_y, x.dtype)[None, :, None, None, :] + off[..., 0]
    xs = tf.cast(base_x, x.dtype)[None, None, :, None, :] + off[..., 1]
    cols = _sample(x, y, xs, offset_groups)                      # (B, Ho, Wo, K, G, Cg)
    if mask is not None:
        m = tf.reshape(tf.convert_to_tensor(mask, x.dtype), [b, ho, wo, offset_groups, k])
        cols = cols * tf.transpose(m, [0, 1, 2, 4, 3])[..., None]
    cols = tf.reshape(cols, [b, ho, wo, k, groups, cin_g])      # channel g*Cg + c, conv groups
    w = tf.reshape(tf.cast(kernel, x.dtype), [k, cin_g, groups, cout // groups])
    out = tf.reshape(tf.einsum("bhwkgc,kcgo->bhwgo", cols, w), [b, ho, wo, cout])
    return out if bias is None else out + tf.cast(bias, x.dtype)
