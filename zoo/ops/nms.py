"""Non-maximum suppression with torchvision's semantics (`torchvision.ops.nms`, `batched_nms`).

What torchvision's CPU kernel (csrc/ops/cpu/nms_kernel.cpp, torchvision 0.29) does, and so what
this does:
- boxes are (x1, y1, x2, y2); area = (x2 - x1) * (y2 - y1) in the boxes' dtype, not clamped, so a
  degenerate (zero-area) box has IoU 0/0 = NaN with another degenerate box, and NaN > threshold is
  false: it is never suppressed by it; a flipped box (x2 < x1) gets a negative area as in torch;
- candidates are visited in descending score order of a *stable* sort: equal scores keep their
  input order (checked against torchvision with ties: the lower index wins);
- box j is suppressed by an earlier kept box i when IoU(i, j) > iou_threshold, the IoU computed
  as inter / (area_i + area_j - inter) with inter = max(0, w) * max(0, h), in the boxes' dtype;
  torch compares that float IoU with the threshold as a C++ double. Here the threshold is rounded
  *down* to the boxes' dtype (float32(0.3) rounds up, past 0.3): for a float32 IoU v,
  v > 0.3 (double) exactly when v > round_down(0.3), so the result is the same without a float64
  comparison (which TFLite's builtin ops cannot run);
- the result is the kept indices (int64) in visiting order, i.e. by descending score.

batched_nms follows torchvision's two code paths, which can differ in the last bit: up to 1000
boxes (4000 numbers, the CPU threshold) it offsets each class's boxes by class * (max coordinate
+ 1) and runs one nms (float rounding of the shifted coordinates included); above that it runs nms
per class on the original boxes. torchvision orders that second path's result with an *unstable*
sort by score, so among equal scores across classes its order is unspecified; here it is the input
order.

The greedy pass is a tf.while_loop whose iterations are the kept boxes (each step keeps the first
still-alive box and kills the alive boxes it overlaps), so it runs inside tf.function and
SavedModel with any number of boxes, with O(N) memory.
"""
import numpy as np
import tensorflow as tf

# torchvision.ops.boxes.batched_nms switches from the coordinate trick to per-class nms above
# this many numbers in `boxes` on CPU.
_VANILLA_ABOVE = 4000


def _greedy(boxes, scores, groups, iou_threshold):
    """Indices kept by greedy NMS, only boxes of the same group suppressing each other."""
    boxes = tf.convert_to_tensor(boxes)
    return _greedy_graph(boxes, tf.convert_to_tensor(scores, boxes.dtype),
                         tf.convert_to_tensor(groups), _threshold(iou_threshold, boxes.dtype))


def _threshold(value, dtype):
    """The largest number of `dtype` <= the (Python float) threshold: `iou > it` in that dtype is
    torch's `iou > threshold` in double (module docstring)."""
    t = np.asarray(value, dtype.as_numpy_dtype)
    if float(t) > float(value):
        t = np.nextafter(t, -np.inf)
    return tf.constant(t, dtype)


# A graph even when called eagerly: an eager tf.while_loop runs its body op by op from Python
# (seconds for a thousand boxes). reduce_retracing: one trace serves every number of boxes.
@tf.function(reduce_retracing=True)
def _greedy_graph(boxes, scores, groups, threshold):
    order = tf.argsort(scores, direction="DESCENDING", stable=True)
    sorted_boxes = tf.gather(boxes, order)
    # column slices, not tf.unstack: TFLite's UNPACK refuses an empty box set
    x1, y1, x2, y2 = (sorted_boxes[:, i] for i in range(4))
    groups = tf.gather(groups, order)
    areas = (x2 - x1) * (y2 - y1)
    n = tf.shape(order)[0]
    positions = tf.range(n)
    zero = tf.zeros((), boxes.dtype)

    def step(alive, kept):
        i = tf.argmax(tf.cast(alive, tf.int32), output_type=tf.int32)  # first alive box
        w = tf.maximum(zero, tf.minimum(x2[i], x2) - tf.maximum(x1[i], x1))
        h = tf.maximum(zero, tf.minimum(y2[i], y2) - tf.maximum(y1[i], y1))
        inter = w * h
        iou = inter / (areas[i] + areas - inter)
        killed = (iou > threshold) & tf.equal(groups, groups[i])
        return alive & ~killed & tf.not_equal(positions, i), kept | tf.equal(positions, i)

    alive = tf.ones([n], tf.bool)
    _, kept = tf.while_loop(lambda alive, kept: tf.reduce_any(alive), step,
                            (alive, tf.zeros([n], tf.bool)))
    return tf.cast(tf.gather(order, tf.where(kept)[:, 0]), tf.int64)


def nms(boxes, scores, iou_threshold):
    """torchvision.ops.nms: boxes (N, 4) as (x1, y1, x2, y2), scores (N,) -> kept indices (int64),
    by descending score; a box is dropped when its IoU with a kept box is > iou_threshold."""
    return _greedy(boxes, scores, tf.zeros(tf.shape(scores)[:1], tf.int32), iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision.ops.batched_nms: nms within each category of `idxs` (N,) only."""
    boxes = tf.convert_to_tensor(boxes)
    idxs = tf.convert_to_tensor(idxs)
    if boxes.shape[0] == 0:
        return tf.zeros([0], tf.int64)
    # Both of torchvision's paths are one greedy pass: up to 1000 boxes over boxes shifted apart
    # per class (the shift's rounding is part of torchvision's result), all in one group; above
    # that over the original boxes, grouped by class. A select, not a tf.cond: TFLite's IF op
    # cannot hand back an empty result.
    vanilla = tf.shape(boxes)[0] * 4 > _VANILLA_ABOVE
    offsets = tf.cast(idxs, boxes.dtype) * (tf.reduce_max(boxes) + tf.ones((), boxes.dtype))
    shifted = boxes + tf.expand_dims(offsets, 1)
    groups = tf.cast(idxs, tf.int32)
    return _greedy(tf.where(vanilla, boxes, shifted), scores,
                   tf.where(vanilla, groups, tf.zeros_like(groups)), iou_threshold)
