"""torchvision's semantic segmentation models (`torchvision.models.segmentation`): FCN and
DeepLabV3 on a dilated ResNet-50 or MobileNetV3-Large, LR-ASPP on MobileNetV3-Large. Targets of
recipes/segmentation.yaml.

The backbones are the classifiers' bodies (zoo/models/resnet.py, zoo/models/mobilenet.py) with
their dilation options, so their layers keep the classifier recipes' names. The heads' layers are
named after torchvision's module paths with `_` for `.` (`classifier_4`, `aux_classifier_0`,
`classifier_0_convs_1_0`), so that each torch module maps by one rule.

The model returns a dict like torchvision's OrderedDict: `out`, and `aux` when the model has the
auxiliary FCN head (`aux=True`, torchvision's aux_loss): class logits (or
`classifier_activation` over the class axis) at the input's height and width. `include_top=False`
ends at the backbone map the main head reads; `features_only=True` returns the backbone stages.
"""
from __future__ import annotations

import keras

from zoo.layers.resize import ResizeLike
from zoo.models.blocks import application, conv2d, conv_norm_act
from zoo.models.mobilenet import mobilenet_v3_features
from zoo.models.resnet import resnet

HEADS = ("fcn", "deeplabv3", "lraspp")
ASPP_RATES = (12, 24, 36)   # torchvision DeepLabHead's atrous rates (output stride 8 and 16 alike)
ASPP_WIDTH = 256
LRASPP_WIDTH = 128          # torchvision's inter_channels


def _layer_output(inputs, x, name):
    """The tensor of layer `name` in the graph from `inputs` to `x` (a tap inside a backbone)."""
    return keras.Model(inputs, x).get_layer(name).output


def _resnet50(inputs):
    """torchvision resnet50(replace_stride_with_dilation=[False, True, True]): output stride 8;
    `out` is layer4 (2048 channels), the auxiliary head reads layer3 (1024)."""
    x = resnet.__wrapped__(inputs, depths=(3, 4, 6, 3),
                           replace_stride_with_dilation=(False, True, True))
    return x, _layer_output(inputs, x, "stage3")


def _mobilenet_v3_large(inputs):
    """torchvision mobilenet_v3_large(dilated=True).features: `out` is its last 1x1 conv (960
    channels, stride 16); the auxiliary / low-level tap is features.4 (torchvision takes the
    fourth-last of its strided blocks: 40 channels, stride 8), the first block of a stage, whose
    last layer is its projection's BatchNorm (it strides, so it has no residual)."""
    x = mobilenet_v3_features(inputs, "large", bn_eps=1e-3, torch_bn_momentum=0.01, dilated=True)
    return x, _layer_output(inputs, x, "block4_bn3")


BACKBONES = {"resnet50": _resnet50, "mobilenet_v3_large": _mobilenet_v3_large}


def _cna(x, filters, kernel, prefix, first, dilation=1):
    """conv (no bias) -> BatchNorm -> ReLU named `<prefix>_<first>`, `_<first+1>`, `_<first+2>`
    (the positions in torchvision's nn.Sequential)."""
    names = tuple(f"{prefix}_{first + i}" for i in range(3))
    return conv_norm_act(x, filters, kernel, names=names, dilation=dilation)


def _fcn_head(x, classes, prefix):
    """torchvision FCNHead: 3x3 conv to C/4 -> BN -> ReLU -> Dropout(0.1) -> 1x1 conv (bias)."""
    y = _cna(x, x.shape[-1] // 4, 3, prefix, 0)
    y = keras.layers.Dropout(0.1, name=f"{prefix}_3")(y)
    return conv2d(y, classes, 1, use_bias=True, name=f"{prefix}_4")


def _aspp(x, prefix):
    """torchvision ASPP: a 1x1 branch, three dilated 3x3 branches and an image-pooling branch
    (global mean -> 1x1 conv -> BN -> ReLU -> bilinear back to the map's size), concatenated in
    that order (torch's channel order), then 1x1 conv -> BN -> ReLU -> Dropout(0.5)."""
    branches = [_cna(x, ASPP_WIDTH, 1, f"{prefix}_convs_0", 0)]
    for i, rate in enumerate(ASPP_RATES, start=1):
        branches.append(_cna(x, ASPP_WIDTH, 3, f"{prefix}_convs_{i}", 0, dilation=rate))
    pool = f"{prefix}_convs_{len(ASPP_RATES) + 1}"
    y = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{pool}_0")(x)
    y = _cna(y, ASPP_WIDTH, 1, pool, 1)
    branches.append(ResizeLike(name=f"{pool}_resize")([y, x]))
    y = keras.layers.Concatenate(name=f"{prefix}_concat")(branches)
    y = _cna(y, ASPP_WIDTH, 1, f"{prefix}_project", 0)
    return keras.layers.Dropout(0.5, name=f"{prefix}_project_3")(y)


def _deeplab_head(x, classes, prefix):
    """torchvision DeepLabHead: ASPP -> 3x3 conv -> BN -> ReLU -> 1x1 conv (bias)."""
    y = _aspp(x, f"{prefix}_0")
    y = _cna(y, ASPP_WIDTH, 3, prefix, 1)
    return conv2d(y, classes, 1, use_bias=True, name=f"{prefix}_4")


def _lraspp_head(high, low, classes, prefix):
    """torchvision LRASPPHead: ReLU(BN(1x1 conv(high))) gated by sigmoid(1x1 conv(mean(high))),
    resized bilinearly to the low-level map, then low_classifier(low) + high_classifier(x)."""
    x = _cna(high, LRASPP_WIDTH, 1, f"{prefix}_cbr", 0)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_scale_0")(high)
    s = conv2d(s, LRASPP_WIDTH, 1, name=f"{prefix}_scale_1", activation="sigmoid")
    x = keras.layers.Multiply(name=f"{prefix}_gate")([x, s])
    x = ResizeLike(name=f"{prefix}_resize")([x, low])
    low = conv2d(low, classes, 1, use_bias=True, name=f"{prefix}_low_classifier")
    x = conv2d(x, classes, 1, use_bias=True, name=f"{prefix}_high_classifier")
    return keras.layers.Add(name=f"{prefix}_add")([low, x])


@application(lambda head, backbone, **_: f"{head}_{backbone}", classes=21)
def segmentation(inputs, head="fcn", backbone="resnet50", aux=True):
    """head: "fcn", "deeplabv3" or "lraspp" (which has no auxiliary head); backbone: "resnet50"
    or "mobilenet_v3_large"; aux: the auxiliary FCN head on the stride-8 tap. classes: 21
    (torchvision's COCO-with-VOC-labels weights)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    if head == "lraspp" and aux:
        raise ValueError("the lraspp head has no auxiliary head: pass aux=False")
    x, tap = BACKBONES[backbone](inputs)

    def top(x, classes, classifier_activation):
        if head == "lraspp":
            logits = {"out": _lraspp_head(x, tap, classes, "classifier")}
        else:
            main = _fcn_head if head == "fcn" else _deeplab_head
            logits = {"out": main(x, classes, "classifier")}
            if aux:
                logits["aux"] = _fcn_head(tap, classes, "aux_classifier")
        outputs = {}
        for key, y in logits.items():
            y = ResizeLike(name=f"{key}_resize")([y, inputs])   # to the input's size
            if classifier_activation is not None:
                y = keras.layers.Activation(classifier_activation, name=f"{key}_act")(y)
            outputs[key] = y
        return outputs

    return x, top
