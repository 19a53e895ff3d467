"""SSD post-processing with torchvision's semantics (`torchvision.models.detection.ssd`): default
boxes (DefaultBoxGenerator), box decoding (BoxCoder), per-class score threshold and top-k,
batched NMS (zoo/ops/nms.py), boxes scaled back to the input image's size.

The anchors are a derived buffer, not weights: they follow from the aspect ratios, the scale
range and the feature-map sizes, so they are rebuilt here in NumPy with torchvision's float32
arithmetic (tests/test_family_detection.py compares them with torchvision's for the same maps).

Detections are returned per image, padded to `detections_per_img` rows so that a batch is one
tensor (the TF Object Detection API's layout): `boxes` (B, D, 4) as (x1, y1, x2, y2) in input
pixels, `scores` (B, D), `labels` (B, D) int64, where label 0 (torchvision's background class,
never a detection) and score 0 mark the padding rows. torchvision returns the same rows as a list
of per-image dicts; zoo/conversion/detection.py pads those the same way.
"""
import math

import keras
import numpy as np

# torchvision BoxCoder: weights of SSD's (dx, dy, dw, dh) and the clamp of dw, dh before exp()
SSD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def default_box_scales(num_maps, min_ratio, max_ratio):
    """DefaultBoxGenerator's scales: evenly from min_ratio to max_ratio, then 1.0."""
    if num_maps == 1:
        return [min_ratio, max_ratio]
    return [min_ratio + (max_ratio - min_ratio) * k / (num_maps - 1.0)
            for k in range(num_maps)] + [1.0]


def default_boxes(grid_sizes, image_size, aspect_ratios, min_ratio, max_ratio, clip=True):
    """torchvision's DefaultBoxGenerator (steps None) for feature maps of `grid_sizes` [(h, w)]
    on an image of `image_size` (h, w): (A, 4) float32 (x1, y1, x2, y2) in pixels, in the order
    torchvision concatenates them (map, then row, column, then its width/height pairs)."""
    scales = default_box_scales(len(grid_sizes), min_ratio, max_ratio)
    f32 = np.float32
    out = []
    for k, (fh, fw) in enumerate(grid_sizes):
        # the width/height pairs are computed in Python floats, then stored as float32
        s_prime = math.sqrt(scales[k] * scales[k + 1])
        pairs = [[scales[k], scales[k]], [s_prime, s_prime]]
        for ar in aspect_ratios[k]:
            w, h = scales[k] * math.sqrt(ar), scales[k] / math.sqrt(ar)
            pairs += [[w, h], [h, w]]
        wh = np.asarray(pairs, f32)
        if clip:
            wh = np.clip(wh, f32(0), f32(1))
        xs = (np.arange(fw, dtype=f32) + f32(0.5)) / f32(fw)
        ys = (np.arange(fh, dtype=f32) + f32(0.5)) / f32(fh)
        cy, cx = np.meshgrid(ys, xs, indexing="ij")
        centres = np.repeat(np.stack([cx.ravel(), cy.ravel()], -1), len(wh), axis=0)
        out.append(np.concatenate([centres, np.tile(wh, (fh * fw, 1))], 1))
    boxes = np.concatenate(out)
    scale = np.asarray([image_size[1], image_size[0]], f32)
    return np.concatenate([(boxes[:, :2] - f32(0.5) * boxes[:, 2:]) * scale,
                           (boxes[:, :2] + f32(0.5) * boxes[:, 2:]) * scale], 1).astype(f32)


def decode_boxes(rel_codes, anchors, weights=SSD_BOX_WEIGHTS, clip=BBOX_XFORM_CLIP):
    """BoxCoder.decode_single: (A, 4) offsets against (A, 4) anchors -> (x1, y1, x2, y2)."""
    import tensorflow as tf

    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = rel_codes[:, 0] / wx, rel_codes[:, 1] / wy
    # torch.clamp(max=...) before exp(): a huge dw/dh must not overflow
    dw = tf.minimum(rel_codes[:, 2] / ww, clip)
    dh = tf.minimum(rel_codes[:, 3] / wh, clip)
    pred_x, pred_y = dx * widths + ctr_x, dy * heights + ctr_y
    half_w, half_h = 0.5 * (tf.exp(dw) * widths), 0.5 * (tf.exp(dh) * heights)
    return tf.stack([pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h], 1)


@keras.saving.register_keras_serializable(package="zoo")
class Resize(keras.layers.Layer):
    """`F.interpolate(x, size, mode="bilinear", align_corners=False)` to a fixed (h, w) on NHWC
    images, GeneralizedRCNNTransform's resize: TF's bilinear resize without antialiasing is that
    function (zoo/layers/resize.py). Not keras.layers.Resizing: a model holding one runs its
    BatchNorms in training mode when called without `training=False` (Keras 3.15), which
    silently changed every output."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(int(v) for v in size)

    def call(self, x):
        return keras.ops.image.resize(x, self.size, interpolation="bilinear", antialias=False)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": list(self.size)}


@keras.saving.register_keras_serializable(package="zoo")
class SSDDetections(keras.layers.Layer):
    """SSD.postprocess_detections + GeneralizedRCNNTransform.postprocess, for a batch.

    Inputs: [image (B, H, W, C) as given to the model (only its size is read), cls_logits
    (B, A, K), bbox_regression (B, A, 4)] at the network's `image_size`. Per image: softmax,
    decode, clip to image_size, for each class but the background the scores > score_thresh and
    of those the topk_candidates best, batched NMS at nms_thresh, the detections_per_img best,
    boxes scaled from image_size to (H, W). Returns {"boxes", "scores", "labels"} padded to
    detections_per_img rows (module docstring).
    """

    def __init__(self, grid_sizes, image_size, aspect_ratios, min_ratio, max_ratio,
                 score_thresh=0.01, nms_thresh=0.45, detections_per_img=200, topk_candidates=400,
                 **kwargs):
        super().__init__(**kwargs)
        self.grid_sizes = [tuple(int(v) for v in g) for g in grid_sizes]
        self.image_size = tuple(int(v) for v in image_size)
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        self.min_ratio, self.max_ratio = float(min_ratio), float(max_ratio)
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
        self.topk_candidates = int(topk_candidates)
        self._graph = None
        self.anchors = default_boxes(self.grid_sizes, self.image_size, self.aspect_ratios,
                                     self.min_ratio, self.max_ratio)

    def _first_kept(self, boxes, scores, labels):
        """batched_nms(boxes, scores, labels)[:detections_per_img], from the fewest candidates
        that decide it. Greedy NMS visits the candidates by descending score and a candidate's
        fate depends only on those before it, so NMS over the m best candidates keeps exactly
        the start of what NMS over all keeps; if that start already holds detections_per_img
        boxes, the rest cannot change it. Up to 27,000 candidates (90 classes x 300) would
        otherwise cost one loop iteration per kept box. m stays above torchvision's
        per-class threshold (zoo/ops/nms.py), so both runs take the path torchvision takes on
        the full set."""
        import tensorflow as tf

        from zoo.ops.nms import _VANILLA_ABOVE, batched_nms

        d = self.detections_per_img
        m = max(4 * d, _VANILLA_ABOVE // 4 + 1)   # more boxes than the coordinate trick takes

        def run(index):
            return tf.gather(index, batched_nms(tf.gather(boxes, index), tf.gather(scores, index),
                                                tf.gather(labels, index), self.nms_thresh))

        order = tf.argsort(scores, direction="DESCENDING", stable=True)
        if scores.shape[0] is not None and scores.shape[0] <= m:
            return run(order)[:d]
        start = run(order[:m])
        return tf.cond(tf.shape(start)[0] >= d, lambda: start[:d], lambda: run(order)[:d])

    def _one_image(self, logits, regression, ratios):
        import tensorflow as tf

        scores = tf.nn.softmax(logits, axis=-1)
        h, w = self.image_size
        boxes = decode_boxes(regression, tf.constant(self.anchors))
        boxes = tf.clip_by_value(boxes, 0.0, tf.constant([w, h, w, h], tf.float32))
        # per class (background 0 excluded): threshold, then the k best in descending order; the
        # candidates are concatenated class after class, as torchvision does
        per_class = tf.transpose(scores[:, 1:])
        k = min(self.topk_candidates, self.anchors.shape[0])
        masked = tf.where(per_class > self.score_thresh, per_class, -1.0)
        best, index = tf.math.top_k(masked, k=k)
        valid = best > self.score_thresh
        cand_scores = tf.boolean_mask(best, valid)
        cand_boxes = tf.gather(boxes, tf.boolean_mask(index, valid))
        labels = tf.broadcast_to(tf.range(1, tf.shape(scores)[1], dtype=tf.int64)[:, None],
                                 tf.shape(index, out_type=tf.int32))
        cand_labels = tf.boolean_mask(labels, valid)
        keep = self._first_kept(cand_boxes, cand_scores, cand_labels)
        pad = self.detections_per_img - tf.shape(keep)[0]
        return (tf.pad(tf.gather(cand_boxes, keep) * ratios, [[0, pad], [0, 0]]),
                tf.pad(tf.gather(cand_scores, keep), [[0, pad]]),
                tf.pad(tf.gather(cand_labels, keep), [[0, pad]]))

    def call(self, inputs):
        import tensorflow as tf

        # eagerly, the NMS loop would run op by op (tens of seconds per image): run it as a graph
        if self._graph is None:
            self._graph = tf.function(self._detect, reduce_retracing=True)
        return self._graph(*inputs)

    def _detect(self, image, cls_logits, bbox_regression):
        import tensorflow as tf

        size = tf.cast(tf.shape(image)[1:3], tf.float32)
        # torchvision's resize_boxes: original size / network size per axis, in float32
        ratio_h, ratio_w = size[0] / self.image_size[0], size[1] / self.image_size[1]
        ratios = tf.stack([ratio_w, ratio_h, ratio_w, ratio_h])
        d = self.detections_per_img
        boxes, scores, labels = tf.map_fn(
            lambda t: self._one_image(t[0], t[1], ratios), (cls_logits, bbox_regression),
            fn_output_signature=(tf.TensorSpec((d, 4), tf.float32), tf.TensorSpec((d,), tf.float32),
                                 tf.TensorSpec((d,), tf.int64)))
        return {"boxes": boxes, "scores": scores, "labels": labels}

    def compute_output_spec(self, inputs):
        batch = inputs[1].shape[0]
        d = self.detections_per_img
        return {"boxes": keras.KerasTensor((batch, d, 4), "float32"),
                "scores": keras.KerasTensor((batch, d), "float32"),
                "labels": keras.KerasTensor((batch, d), "int64")}

    def get_config(self):
        return {**super().get_config(), "grid_sizes": [list(g) for g in self.grid_sizes],
                "image_size": list(self.image_size), "aspect_ratios": self.aspect_ratios,
                "min_ratio": self.min_ratio, "max_ratio": self.max_ratio,
                "score_thresh": self.score_thresh, "nms_thresh": self.nms_thresh,
                "detections_per_img": self.detections_per_img,
                "topk_candidates": self.topk_candidates}
