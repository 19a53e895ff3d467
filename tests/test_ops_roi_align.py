"""zoo.ops.roi_align against torchvision.ops.roi_align / MultiScaleRoIAlign (the compiled CPU
kernel): adaptive and fixed sampling ratios, aligned both ways, boxes partly or wholly outside the
map, malformed boxes, empty box sets, the list form, FPN level mapping, free box counts."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision before tensorflow)

# isort: split

from collections import OrderedDict

import numpy as np
import pytest
import tensorflow as tf
import torch
import torchvision

from zoo.ops.roi_align import MultiScaleRoIAlign, roi_align

TOL = 1e-5


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.numpy().transpose(0, 2, 3, 1)


def _features(b=2, h=12, w=15, c=4, seed=0):
    return np.random.default_rng(seed).standard_normal((b, h, w, c)).astype(np.float32)


def _boxes(rng, k, extent, batch=2):
    """(batch_index, x1, y1, x2, y2) in image coordinates, some reaching past the map, some
    malformed (x2 < x1) or zero-sized."""
    xy = rng.uniform(-0.3 * extent, extent, (k, 2))
    wh = rng.uniform(0, 0.8 * extent, (k, 2))
    wh[rng.random(k) < 0.1] *= -1
    wh[rng.random(k) < 0.1] = 0
    idx = rng.integers(0, batch, (k, 1))
    return np.concatenate([idx, xy, xy + wh], 1).astype(np.float32)


# each setting is a trace of the op (about a second): the grid covers each value, not every product
CASES = [(-1, False, 1.0, (3, 3)), (-1, True, 0.25, (2, 5)), (0, False, 0.25, (2, 5)),
         (0, True, 1.0, (3, 3)), (2, False, 1.0, (2, 5)), (2, True, 0.25, (3, 3)),
         (3, False, 0.5, (4, 1))]


@pytest.mark.parametrize("ratio,aligned,scale,size", CASES)
def test_roi_align_matches_torchvision(ratio, aligned, scale, size):
    rng = np.random.default_rng(int(ratio + 5 + 10 * aligned + 100 * scale) + size[1])
    x = _features()
    rois = _boxes(rng, 40, 15 / scale)
    want = torchvision.ops.roi_align(_nchw(x), torch.from_numpy(rois), size, scale, ratio, aligned)
    got = roi_align(x, rois, size, scale, ratio, aligned).numpy()
    np.testing.assert_allclose(got, _nhwc(want), atol=TOL, rtol=0)


def test_list_form_and_empty_box_sets():
    rng = np.random.default_rng(5)
    x = _features()
    boxes = [_boxes(rng, 6, 15)[:, 1:], np.zeros((0, 4), np.float32)]
    want = torchvision.ops.roi_align(_nchw(x), [torch.from_numpy(b) for b in boxes], 4, 1.0, 2)
    got = roi_align(x, boxes, 4, 1.0, 2).numpy()
    np.testing.assert_allclose(got, _nhwc(want), atol=TOL, rtol=0)
    empty = roi_align(x, np.zeros((0, 5), np.float32), (3, 2), 0.5, -1).numpy()
    assert empty.shape == (0, 3, 2, 4)


def test_in_a_tf_function_with_a_free_number_of_boxes():
    f = tf.function(lambda a, r: roi_align(a, r, 3, 0.5, -1, True),
                    input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32),
                                     tf.TensorSpec([None, 5], tf.float32)])
    rng = np.random.default_rng(6)
    x = _features()
    for k in (0, 1, 9):
        rois = _boxes(rng, k, 30)
        want = torchvision.ops.roi_align(_nchw(x), torch.from_numpy(rois), 3, 0.5, -1, True)
        np.testing.assert_allclose(f(x, rois).numpy(), _nhwc(want), atol=TOL, rtol=0)


@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_multiscale_roi_align_maps_levels_as_torchvision(sampling_ratio):
    rng = np.random.default_rng(7)
    image_shapes = [(256, 200), (240, 256)]   # the largest height (256) sets the scales
    feats = OrderedDict((name, rng.standard_normal((2, 256 // s, 256 // s, 3)).astype(np.float32))
                        for name, s in (("p2", 4), ("p3", 8), ("extra", 16), ("p5", 32)))
    # sides of every level, incl. exact powers of two of the canonical 224 (level boundaries)
    sides = np.array([8, 16, 56, 112, 150, 224, 300, 448, 600], np.float32)
    boxes = []
    for n in (len(sides), 5):
        xy = rng.uniform(0, 100, (n, 2)).astype(np.float32)
        side = sides if n == len(sides) else rng.uniform(4, 400, n).astype(np.float32)
        boxes.append(np.concatenate([xy, xy + side[:, None]], 1))
    names = ["p2", "p3", "p5"]   # "extra" is skipped; order is the dict's
    pooler = torchvision.ops.MultiScaleRoIAlign(names, 5, sampling_ratio)
    want = pooler({k: _nchw(v) for k, v in feats.items()}, [torch.from_numpy(b) for b in boxes],
                  image_shapes)
    got = MultiScaleRoIAlign(names, 5, sampling_ratio)(feats, boxes, image_shapes).numpy()
    np.testing.assert_allclose(got, _nhwc(want), atol=TOL, rtol=0)
