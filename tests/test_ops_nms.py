"""zoo.ops.nms against torchvision.ops.nms / batched_nms (the compiled CPU kernel): the same kept
indices in the same order, on random boxes with heavy overlap, tied scores, degenerate and flipped
boxes, empty sets and many classes, eagerly and inside a tf.function with a free number of boxes."""
import zoo.conversion.torch_first  # noqa: F401  (torch, torchvision before tensorflow)

# isort: split

import numpy as np
import pytest
import tensorflow as tf
import torch
import torchvision

from zoo.ops.nms import batched_nms, nms


def _boxes(rng, n, degenerate=False):
    """(x1, y1, x2, y2) boxes crowded into a 60 x 40 field so that most of them overlap."""
    xy = rng.uniform(0, [60, 40], (n, 2))
    wh = rng.uniform(1, 20, (n, 2))
    if degenerate:   # zero width, zero area points, exact duplicates and flipped boxes
        wh[rng.random(n) < 0.15, 0] = 0
        wh[rng.random(n) < 0.1] = 0
        dup = rng.random(n) < 0.1
        xy[dup], wh[dup] = xy[0], wh[0]
        wh[rng.random(n) < 0.05] *= -1
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _scores(rng, n, ties):
    # ties: a few distinct values, so that most boxes share their score with others
    s = rng.integers(0, 5, n) / 4 if ties else rng.random(n)
    return s.astype(np.float32)


def _torch_nms(boxes, scores, thr):
    return torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()


CASES = [(n, thr, ties, degenerate) for n in (1, 7, 60, 300) for thr in (0.0, 0.3, 0.5, 0.7)
         for ties in (False, True) for degenerate in (False, True)]


@pytest.mark.parametrize("n,thr,ties,degenerate", CASES)
def test_nms_keeps_torchvisions_indices_in_order(n, thr, ties, degenerate):
    rng = np.random.default_rng(n * 100 + int(thr * 10) + 7 * ties + 3 * degenerate)
    boxes, scores = _boxes(rng, n, degenerate), _scores(rng, n, ties)
    want = _torch_nms(boxes, scores, thr)
    got = nms(boxes, scores, thr).numpy()
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_ties_keep_input_order():
    # identical disjoint boxes' scores all equal: nothing is suppressed, the order is the input's
    boxes = np.array([[10 * i, 0, 10 * i + 5, 5] for i in range(6)], np.float32)
    scores = np.ones(6, np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5).numpy(), np.arange(6))
    np.testing.assert_array_equal(_torch_nms(boxes, scores, 0.5), np.arange(6))
    # two identical boxes with equal scores: the first one wins, in both
    same = np.array([[0, 0, 4, 4], [0, 0, 4, 4]], np.float32)
    np.testing.assert_array_equal(nms(same, np.ones(2, np.float32), 0.5).numpy(), [0])
    np.testing.assert_array_equal(_torch_nms(same, np.ones(2, np.float32), 0.5), [0])


def test_threshold_is_compared_as_a_double():
    # IoU 30/100, exactly float32(0.3) = 0.30000001192...: above the double 0.3, so torch
    # suppresses; a comparison in float32 would not
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 3]], np.float32)
    scores = np.array([1, 0.5], np.float32)
    want = _torch_nms(boxes, scores, 0.3)
    np.testing.assert_array_equal(want, [0])
    np.testing.assert_array_equal(nms(boxes, scores, 0.3).numpy(), want)


def test_empty_sets():
    empty = np.zeros((0, 4), np.float32)
    for got in (nms(empty, np.zeros(0, np.float32), 0.5),
                batched_nms(empty, np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5)):
        assert got.dtype == tf.int64 and got.shape == (0,)


@pytest.mark.parametrize("n,classes,ties", [(50, 3, True), (400, 40, True), (1000, 91, False),
                                            (1001, 91, False), (1500, 7, False)])
def test_batched_nms_matches_torchvision(n, classes, ties):
    # up to 1000 boxes torchvision offsets the boxes per class, above it runs nms per class (whose
    # final sort by score is unstable in torch: ties across classes only below that size)
    rng = np.random.default_rng(n + classes)
    boxes, scores = _boxes(rng, n, degenerate=True), _scores(rng, n, ties)
    idxs = rng.integers(0, classes, n)
    want = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                       torch.from_numpy(idxs), 0.5).numpy()
    np.testing.assert_array_equal(batched_nms(boxes, scores, idxs, 0.5).numpy(), want)


def test_inside_tf_function_with_a_free_number_of_boxes(tmp_path):
    signature = [tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.float32),
                 tf.TensorSpec([None], tf.int64)]
    module = tf.Module()
    module.run = tf.function(lambda b, s, i: (nms(b, s, 0.5), batched_nms(b, s, i, 0.5)),
                             input_signature=signature)
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    rng = np.random.default_rng(3)
    for n in (0, 1, 90, 1200):   # 1200: the per-class path, chosen at run time
        boxes, scores, idxs = _boxes(rng, n), _scores(rng, n, False), rng.integers(0, 5, n)
        kept, kept_batched = loaded.run(boxes, scores, idxs)
        np.testing.assert_array_equal(kept.numpy(), _torch_nms(boxes, scores, 0.5))
        want = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                           torch.from_numpy(idxs), 0.5).numpy()
        np.testing.assert_array_equal(kept_batched.numpy(), want)
