"""SSDlite320 with a MobileNetV3-Large backbone (torchvision `models/detection/ssdlite.py`). Target
of recipes/ssdlite.yaml.

The whole torchvision detector in one Keras graph, image in, detections out:

* preprocessing (GeneralizedRCNNTransform at eval): normalise with the model's mean/std, then
  resize to `size` x `size` bilinearly (torch's `interpolate(align_corners=False)`, no antialias);
  so the model takes an image of any size, values in [0, 1] like torchvision's;
* backbone: torchvision's MobileNetV3-Large with `reduced_tail` (no pretrained backbone and the
  COCO weights both build it so), BatchNorm eps 1e-3 / momentum 0.03. SSDlite taps the C4 map
  after the *expansion* of the first stride-32 block (`block13_act1`, 672 channels at stride
  16, MobileNetV3 paper section 6.3) and the end of the backbone (480 channels at stride 32);
  then four extra blocks (1x1 conv, 3x3 depthwise stride 2, 1x1 conv, each BN + ReLU6) halve
  the map down to 1 x 1;
* heads: per map a 3x3 depthwise conv-BN-ReLU6 and a 1x1 conv with bias, for the class logits
  (`cls_logits` (B, A, 91)) and the box offsets (`bbox_regression` (B, A, 4)); torch's
  view/permute/reshape of (N, A*K, H, W) to (N, HWA, K) is a plain reshape of the NHWC map;
* post-processing: zoo/layers/detection.py (`SSDDetections`).

Layer names: the backbone's are zoo/models/mobilenet.py's (block<k> = torchvision features.<k>),
`extra<i>_<j>_{conv,bn,act}` for backbone.extra.<i>.<j>, `<kind>_head<i>_{dw,dw_bn,dw_act,conv}`
for head.<kind>_head.module_list.<i>.
"""
from __future__ import annotations

import keras

from zoo.layers.detection import Resize, SSDDetections
from zoo.models.blocks import Settings, conv2d, conv_norm_act, depthwise, norm
from zoo.models.mobilenet import mobilenet_v3_features

# torchvision ssdlite320_mobilenet_v3_large: DefaultBoxGenerator([[2, 3]] * 6, 0.2, 0.95), and
# the detection defaults it passes to SSD
ASPECT_RATIOS = ((2, 3),) * 6
MIN_RATIO, MAX_RATIO = 0.2, 0.95
C4_TAP = "block13_act1"          # torchvision features[13].block[0]: the C4 expansion layer
EXTRA_WIDTHS = (512, 256, 256, 128)


def _extra_block(x, out, cfg, name):
    """torchvision ssdlite `_extra_block`: 1x1 to out // 2, 3x3 depthwise stride 2, 1x1 to out."""
    mid = out // 2
    x = conv_norm_act(x, mid, 1, cfg=cfg, names=(f"{name}_0_conv", f"{name}_0_bn", f"{name}_0_act"))
    x = norm(depthwise(x, 3, 2, name=f"{name}_1_conv", cfg=cfg), f"{name}_1_bn", cfg)
    x = keras.layers.ReLU(max_value=6.0, name=f"{name}_1_act")(x)
    return conv_norm_act(x, out, 1, cfg=cfg,
                         names=(f"{name}_2_conv", f"{name}_2_bn", f"{name}_2_act"))


def _prediction(x, columns, anchors, cfg, name):
    """torchvision ssdlite `_prediction_block` -> (B, H*W*anchors, columns)."""
    y = norm(depthwise(x, 3, 1, name=f"{name}_dw", cfg=cfg), f"{name}_dw_bn", cfg)
    y = keras.layers.ReLU(max_value=6.0, name=f"{name}_dw_act")(y)
    y = conv2d(y, columns * anchors, 1, use_bias=True, name=f"{name}_conv")
    return keras.layers.Reshape((-1, columns), name=f"{name}_flat")(y)


def ssdlite320_mobilenet_v3_large(input_shape=None, classes=91, size=320,
                                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                  score_thresh=0.001, nms_thresh=0.55, detections_per_img=300,
                                  topk_candidates=300, bn_eps=1e-3, torch_bn_momentum=0.03,
                                  classifier_activation=None,
                                  name="ssdlite320_mobilenet_v3_large"):
    """The detector: image (B, H, W, 3) in [0, 1] -> {"boxes", "scores", "labels" (padded per
    image, zoo/layers/detection.py), "cls_logits", "bbox_regression"}. classes counts the
    background (COCO: 91). The defaults are torchvision's for this model. classifier_activation
    (zoo.create_model's argument) can only be None: `scores` are already softmax probabilities
    and `cls_logits` stay logits, as torchvision's."""
    if classifier_activation is not None:
        raise ValueError("the detector's scores are softmax probabilities already; "
                         f"classifier_activation must be None, got {classifier_activation!r}")
    shape = tuple(input_shape) if input_shape is not None else (None, None, 3)
    image = keras.Input(shape, name="image")
    x = keras.layers.Rescaling([1 / s for s in std], [-m / s for m, s in zip(mean, std)],
                               name="normalize")(image)
    x = Resize((size, size), name="resize")(x)
    last = mobilenet_v3_features(x, "large", bn_eps, torch_bn_momentum, reduced_tail=True)
    taps = [keras.Model(image, last).get_layer(C4_TAP).output, last]
    cfg = Settings(bn_eps=bn_eps, bn_momentum=torch_bn_momentum, act="relu6")
    x = last
    for i, width in enumerate(EXTRA_WIDTHS):
        x = _extra_block(x, width, cfg, f"extra{i}")
        taps.append(x)
    anchors = [2 + 2 * len(r) for r in ASPECT_RATIOS]
    heads = {}
    for kind, columns, output in (("classification", classes, "cls_logits"),
                                  ("regression", 4, "bbox_regression")):
        flat = [_prediction(t, columns, a, cfg, f"{kind}_head{i}")
                for i, (t, a) in enumerate(zip(taps, anchors))]
        heads[output] = keras.layers.Concatenate(axis=1, name=output)(flat)
    detections = SSDDetections(
        [tuple(t.shape[1:3]) for t in taps], (size, size), ASPECT_RATIOS, MIN_RATIO, MAX_RATIO,
        score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
        topk_candidates=topk_candidates, name="detections",
    )([image, heads["cls_logits"], heads["bbox_regression"]])
    return keras.Model(image, {**detections, **heads}, name=name)
