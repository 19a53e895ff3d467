"""MobileViT's unfold/fold: an NHWC feature map <-> sequences of patches, in the order of timm's
`MobileVitBlock` (ml-cvnets), with its bilinear resize when the map is not a whole number of
patches.

timm unfolds (B, C, H, W) into (B * P, N, C): one sequence per pixel position inside a patch
(P = ph * pw, row-major within the patch), whose N elements are the patches (row-major over the
nh x nw patch grid); batch-major, so row b * P + (py * pw + px) of the result holds
x[b, :, i * ph + py, j * pw + px] at position i * nw + j. The transformer attends over N, i.e.
between the same pixel of different patches. These layers produce exactly that tensor (so every
block in between compares with torch's as it is) with reshapes and one transpose each.
"""
from __future__ import annotations

import math

import keras
from keras import ops

from zoo.ops.sampling import interpolate


def _whole(n, patch):
    """n rounded up to whole patches (timm: math.ceil(H / patch_h) * patch_h); None if unknown."""
    return None if n is None else math.ceil(n / patch) * patch


def _needs_resize(static_hw, patch):
    """False only when the static size is known to be whole patches: the resize is then skipped.
    On a dynamic size it is always applied (the identity when no resize is needed)."""
    return any(n is None or n % patch for n in static_hw)


def _resized(x, out_h, out_w, patch, static_hw):
    """timm's F.interpolate(size=..., mode="bilinear", align_corners=False) where needed."""
    if not _needs_resize(static_hw, patch):
        return x
    return interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)


@keras.saving.register_keras_serializable(package="zoo")
class PatchUnfold(keras.layers.Layer):
    """(B, H, W, C) -> (B * patch**2, N, C) in timm's order (module docstring). A map that is
    not a whole number of patches is first resized bilinearly (align_corners=False) up to the
    next multiple, as timm does; PatchFold resizes back."""

    def __init__(self, patch, **kwargs):
        super().__init__(**kwargs)
        self.patch = int(patch)

    def call(self, x):
        p = self.patch
        shape = ops.shape(x)
        nh, nw = (shape[1] + p - 1) // p, (shape[2] + p - 1) // p
        x = _resized(x, nh * p, nw * p, p, x.shape[1:3])
        x = ops.reshape(x, (shape[0], nh, p, nw, p, x.shape[-1]))
        x = ops.transpose(x, (0, 2, 4, 1, 3, 5))   # (B, py, px, i, j, C)
        return ops.reshape(x, (shape[0] * p * p, nh * nw, x.shape[-1]))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        n = None if h is None or w is None else _whole(h, self.patch) * _whole(w, self.patch) // (
            self.patch * self.patch)
        return (None if b is None else b * self.patch * self.patch, n, c)

    def get_config(self):
        return {**super().get_config(), "patch": self.patch}


@keras.saving.register_keras_serializable(package="zoo")
class PatchFold(keras.layers.Layer):
    """[(B * patch**2, N, C) sequences, the (B, H, W, C') map they were unfolded from] ->
    (B, H, W, C): PatchUnfold's inverse (timm's fold), resized back to H x W when the map was
    not a whole number of patches. The map is only read for its size."""

    def __init__(self, patch, **kwargs):
        super().__init__(**kwargs)
        self.patch = int(patch)

    def call(self, inputs):
        tokens, ref = inputs
        p = self.patch
        shape = ops.shape(ref)
        batch, h, w, dim = shape[0], shape[1], shape[2], tokens.shape[-1]
        nh, nw = (h + p - 1) // p, (w + p - 1) // p
        x = ops.reshape(tokens, (batch, p, p, nh, nw, dim))
        x = ops.transpose(x, (0, 3, 1, 4, 2, 5))   # (B, i, py, j, px, C)
        x = ops.reshape(x, (batch, nh * p, nw * p, dim))
        return _resized(x, h, w, p, ref.shape[1:3])

    def compute_output_shape(self, input_shapes):
        tokens, ref = input_shapes
        return (ref[0], ref[1], ref[2], tokens[-1])

    def get_config(self):
        return {**super().get_config(), "patch": self.patch}
