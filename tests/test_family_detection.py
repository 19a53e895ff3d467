"""SSDlite320 MobileNetV3-Large (recipes/ssdlite.yaml): what torchvision computes outside its
modules, each against torchvision's own code: the default boxes (a derived buffer), box decoding
with its clamp, the resize/normalise transform, the detections after NMS (IoU-matched), and the
SavedModel with a varying number of detections per image.

The network proper (backbone, extras, heads) is compared tensor by tensor by the recipe's
validation (outputs cls_logits/bbox_regression and the six head inputs) and tests/test_catalogue.py.
"""
import numpy as np
import pytest

NAME = "torchvision/ssdlite320_mobilenet_v3_large"
# Detections are matched by IoU and label; a matched pair must overlap at least this much and
# differ in score by at most SCORE_ATOL. Scores are softmax probabilities (up to ~0.9 at the
# 0.5 threshold); the head logits agree to ~1.5e-5 relative, i.e. ~1e-4 absolute at |logit| ~5,
# which moves a probability by up to p(1 - p) * 1e-4: 1.06e-5 was measured single-threaded.
MIN_IOU = 0.999
SCORE_ATOL = 3e-5


@pytest.fixture(scope="module")
def detector():
    """(torch SSD with perturbed weights, its Keras model) through the pipeline's weight path."""
    import keras

    from zoo.conversion.pipeline import prepare

    _variant, tm, _kwargs, model, _plan = prepare(NAME)
    yield tm.module, model
    del tm, model
    keras.backend.clear_session()


def _image(h, w, seed):
    """A [0, 1] image like the ones torchvision's detectors take (NHWC, batch 1)."""
    return np.random.default_rng(seed).random((1, h, w, 3)).astype(np.float32)


def _torchvision_detections(module, x):
    """torchvision's SSD.forward itself (a list with one dict), not the recipe's padded view."""
    import torch
    from torchvision.models.detection.ssd import SSD

    with torch.no_grad():
        (det,) = SSD.forward(module, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    return {k: v.numpy() for k, v in det.items()}


@pytest.mark.parametrize("grids,image,ratios", [
    ([(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)], (320, 320), [[2, 3]] * 6),  # SSDlite
    ([(7, 5), (4, 3), (1, 2)], (240, 300), [[2], [2, 3], [3]]),   # non-square maps and image
    ([(6, 4)], (96, 64), [[2]]),                                  # one map: scales (min, max)
])
def test_default_boxes_are_torchvisions(grids, image, ratios):
    import torch
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.image_list import ImageList

    from zoo.layers.detection import default_boxes

    generator = DefaultBoxGenerator(ratios, min_ratio=0.2, max_ratio=0.95)
    want = generator(ImageList(torch.zeros(1, 3, *image), [image]),
                     [torch.zeros(1, 1, h, w) for h, w in grids])[0].numpy()
    got = default_boxes(grids, image, ratios, 0.2, 0.95)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_box_decoding_is_boxcoders_with_its_clamp():
    """BoxCoder(10, 10, 5, 5).decode_single, including dw/dh beyond log(1000/16) (clamped before
    exp(), else the boxes would be 1e30 wide or inf)."""
    import tensorflow as tf
    import torch
    from torchvision.models.detection._utils import BoxCoder

    from zoo.layers.detection import SSD_BOX_WEIGHTS, decode_boxes, default_boxes

    anchors = default_boxes([(4, 4)], (320, 320), [[2, 3]], 0.2, 0.95)
    rel = np.random.default_rng(0).normal(0, 3, anchors.shape).astype(np.float32)
    rel[::7, 2:] = 200.0   # /5 = 40 > clamp 4.14
    want = BoxCoder(SSD_BOX_WEIGHTS).decode_single(torch.from_numpy(rel),
                                                   torch.from_numpy(anchors)).numpy()
    got = decode_boxes(tf.constant(rel), tf.constant(anchors)).numpy()
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("size", [(250, 330), (200, 150)])   # down- and upsampling
def test_transform_is_generalized_rcnn_transform(detector, size):
    """normalise (mean/std 0.5) then bilinear resize to 320 x 320 (align_corners=False, no
    antialias), as the model's GeneralizedRCNNTransform does, at non-square sizes."""
    import keras
    import torch

    module, model = detector
    x = _image(*size, seed=1)
    with torch.no_grad():
        images, _ = module.transform([torch.from_numpy(x[0].transpose(2, 0, 1).copy())])
    want = images.tensors.numpy().transpose(0, 2, 3, 1)
    got = np.asarray(keras.Model(model.input, model.get_layer("resize").output)(x))
    assert got.shape == want.shape == (1, 320, 320, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _match(ref, got):
    """For each torchvision detection, the Keras detection of the same label with the highest
    IoU: (IoUs, |score differences|), NaN where the label has no Keras detection."""
    import torch
    from torchvision.ops import box_iou

    iou = box_iou(torch.from_numpy(ref["boxes"]), torch.from_numpy(got["boxes"])).numpy()
    iou[ref["labels"][:, None] != got["labels"][None, :]] = -1.0
    best = iou.argmax(1) if len(got["boxes"]) else np.zeros(len(ref["boxes"]), int)
    ious = np.where(iou.max(1, initial=-1.0) >= 0, iou.max(1, initial=-1.0), np.nan)
    return ious, np.abs(ref["scores"] - got["scores"][best]) if len(got["boxes"]) else ious


def _unpadded(out, i=0):
    keep = out["labels"][i] > 0
    return {k: np.asarray(out[k][i])[keep] for k in ("boxes", "scores", "labels")}


def test_detections_match_torchvision_by_iou(detector):
    """One non-square image (boxes scaled back to 250 x 330): every torchvision detection has a
    Keras one of the same label with IoU >= MIN_IOU and the same score, and the counts agree.
    Only the last kept boxes could swap with a near-equal candidate at the detections_per_img
    cut, so an unmatched one must score within SCORE_ATOL of the weakest kept detection."""
    module, model = detector
    x = _image(250, 330, seed=2)
    ref = _torchvision_detections(module, x)
    # called as a user would, without training=False (keras.layers.Resizing used to turn every
    # BatchNorm to training mode then: zoo/layers/detection.py's Resize)
    got = _unpadded({k: np.asarray(v) for k, v in model(x).items()})
    assert len(ref["boxes"]) == len(got["boxes"]) == module.detections_per_img
    ious, dscore = _match(ref, got)
    matched = ious >= MIN_IOU
    assert matched.mean() > 0.99, np.sort(ious)[:5]
    assert (dscore[matched] < SCORE_ATOL).all()
    assert (np.abs(ref["scores"][~matched] - ref["scores"].min()) < SCORE_ATOL).all()
    assert got["boxes"][:, 2].max() <= 330 and got["boxes"][:, 3].max() <= 250


def _assert_same_up_to_nms_ties(ref, got, nms_thresh):
    """Every torchvision detection has a Keras one of its label with IoU >= MIN_IOU and the same
    score, with two exceptions. A box clipped to zero area has no IoU (0 / 0): it must have a Keras
    box at the same corners (within 0.01 px). And where two candidates of one label overlap beyond
    the NMS threshold with scores equal within SCORE_ATOL, which one survives is a float tie (seen
    single-threaded): the Keras detection is then the other one of the pair."""
    import torch
    from torchvision.ops import box_iou

    ious, dscore = _match(ref, got)
    matched = ious >= MIN_IOU
    assert matched.mean() > 0.95 and (dscore[matched] < SCORE_ATOL).all()
    rb, rl, rs = ref["boxes"][~matched], ref["labels"][~matched], ref["scores"][~matched]
    same = (rl[:, None] == got["labels"][None, :]) & \
        (np.abs(rs[:, None] - got["scores"][None, :]) < SCORE_ATOL)
    pair = box_iou(torch.from_numpy(rb), torch.from_numpy(got["boxes"])).numpy()
    corners = np.abs(rb[:, None, :] - got["boxes"][None, :, :]).max(-1) < 1e-2
    assert (same & ((pair > nms_thresh) | corners)).any(1).all(), (rs, rb)


def test_saved_model_keeps_a_varying_number_of_detections(detector, tmp_path):
    """A SavedModel of the post-processing (its serving signature, any image size) reproduces
    torchvision's detections when their number varies per image: at score_thresh 0.5 an image
    of N(0, 4) noise keeps some boxes and a flat grey one none (the empty set through NMS); the
    padding rows are zeros. (Only the post-processing is exported here: exporting the whole
    network costs a minute; the conversion's SavedModel parity covers it.)"""
    import keras
    import tensorflow as tf

    from zoo.export import save_model_files
    from zoo.layers.detection import SSDDetections

    module, model = detector
    thresh = 0.5
    config = {**model.get_layer("detections").get_config(), "score_thresh": thresh}
    names = ("image", "cls_logits", "bbox_regression")
    inputs = [keras.Input((None, None, 3), name="image"),
              *(keras.Input(model.output[n].shape[1:], name=n) for n in names[1:])]
    save_model_files(keras.Model(inputs, SSDDetections.from_config(config)(inputs)), tmp_path,
                     ("saved_model",))
    serve = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    noise = 2 * np.random.default_rng(3).standard_normal((1, 240, 280, 3)).astype(np.float32)
    counts = []
    default_thresh, module.score_thresh = module.score_thresh, thresh
    try:
        for x in (noise, np.full((1, 200, 260, 3), 0.5, np.float32)):
            ref = _torchvision_detections(module, x)
            heads = model(x)
            out = {k: np.asarray(v) for k, v in serve(
                image=tf.constant(x), cls_logits=heads["cls_logits"],
                bbox_regression=heads["bbox_regression"]).items()}
            assert out["boxes"].shape == (1, module.detections_per_img, 4)
            got = _unpadded(out)
            counts.append(len(got["boxes"]))
            assert len(ref["boxes"]) == counts[-1]
            assert not out["scores"][0, counts[-1]:].any() and not out["boxes"][0, counts[-1]:].any()
            if counts[-1]:
                _assert_same_up_to_nms_ties(ref, got, module.nms_thresh)
    finally:
        module.score_thresh = default_thresh
    assert 0 < counts[0] < module.detections_per_img and counts[1] == 0, counts


def test_unordered_metric_ignores_row_order_only():
    """metric `unordered` (recipes/ssdlite.yaml's detections): the same rows in another order
    agree exactly; one row moved, or one label changed, does not."""
    from zoo.validate import compare

    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 320, (2, 50, 4))
    labels = rng.integers(1, 91, (2, 50)).astype(np.float64)
    perm = rng.permutation(50)
    assert compare(boxes, boxes[:, perm], unordered=True)["max_rel"] == 0.0
    assert compare(labels, labels[:, perm], unordered=True)["max_rel"] == 0.0
    assert compare(boxes, boxes[:, perm])["max_rel"] > 0.1          # positionally they differ
    moved = boxes[:, perm].copy()
    moved[1, 7] += 5.0
    assert compare(boxes, moved, unordered=True)["max_abs"] == pytest.approx(5.0)
    relabelled = labels.copy()
    relabelled[0, 3] = 91.0 if labels[0, 3] != 91 else 1.0
    assert compare(labels, relabelled, unordered=True)["max_abs"] > 0
