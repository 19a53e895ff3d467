"""Shape helpers shared by zoo.ops, written for exporters: TFLite's builtin StridedSlice cannot
insert axes into tensors of dynamic shape (`t[:, None]` needs SELECT_TF_OPS there), ExpandDims can;
reshapes with static sizes where they are known keep tf2onnx's shape inference exact."""
import tensorflow as tf


def expand(t, *axes):
    """tf.expand_dims at each of `axes` in turn (as `t[:, None]` would, TFLite-builtin)."""
    for axis in axes:
        t = tf.expand_dims(t, axis)
    return t


def dims(t):
    """Static sizes where known, dynamic ones elsewhere."""
    dynamic = tf.shape(t)
    return [d if d is not None else dynamic[i] for i, d in enumerate(t.shape)]
