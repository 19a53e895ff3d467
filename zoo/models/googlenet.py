"""GoogLeNet / Inception v1 (torchvision `googlenet.py`). Layer names mirror the torch module
paths (`inception3a.branch2.1` -> `inception3a_branch2_1_conv`/`_bn`); they are the targets of
recipes/googlenet.yaml.

torchvision quirks reproduced on purpose:
- BasicConv2d's BatchNorm uses eps 1e-3 (the weights were ported from a TF-trained model);
- every max-pool uses `ceil_mode=True`, i.e. a partial window at the bottom/right;
- the "5x5" branch is really a 3x3 conv (a long-standing torchvision bug the weights rely on);
- `transform_input=True` (what the pretrained weights use) re-normalises the input from
  ImageNet mean/std to (x - 0.5) / 0.5 inside the model;
- the two auxiliary classifiers run only in training mode: they are not built here.
"""
from __future__ import annotations

import keras

from zoo.layers import TorchMaxPool2D
from zoo.models.blocks import (
    BASIC_CONV2D_BN_EPS,
    Settings,
    application,
    basic_conv2d,
    stage_end,
    transform_input_layer,
)

# Stages 2-4: the kernel of the ceil-mode max-pool that opens the stage, then its inception
# blocks as (name, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj).
_STAGES = (
    (3, (("inception3a", 64, 96, 128, 16, 32, 32),
         ("inception3b", 128, 128, 192, 32, 96, 64))),
    (3, (("inception4a", 192, 96, 208, 16, 48, 64),
         ("inception4b", 160, 112, 224, 24, 64, 64),
         ("inception4c", 128, 128, 256, 24, 64, 64),
         ("inception4d", 112, 144, 288, 32, 64, 64),
         ("inception4e", 256, 160, 320, 32, 128, 128))),
    (2, (("inception5a", 256, 160, 320, 32, 128, 128),
         ("inception5b", 384, 192, 384, 48, 128, 128))),
)


def _inception(x, ch1, ch3red, ch3, ch5red, ch5, pool_proj, cfg, name):
    b1 = basic_conv2d(x, ch1, 1, cfg=cfg, name=f"{name}_branch1")
    b2 = basic_conv2d(x, ch3red, 1, cfg=cfg, name=f"{name}_branch2_0")
    b2 = basic_conv2d(b2, ch3, 3, padding=1, cfg=cfg, name=f"{name}_branch2_1")
    # the "5x5" branch uses a 3x3 kernel in torchvision (see the module docstring)
    b3 = basic_conv2d(x, ch5red, 1, cfg=cfg, name=f"{name}_branch3_0")
    b3 = basic_conv2d(b3, ch5, 3, padding=1, cfg=cfg, name=f"{name}_branch3_1")
    b4 = TorchMaxPool2D(3, 1, padding=1, ceil_mode=True, name=f"{name}_branch4_0")(x)
    b4 = basic_conv2d(b4, pool_proj, 1, cfg=cfg, name=f"{name}_branch4_1")
    # torch.cat(..., dim=1) in branch order == channels-last concat in the same order
    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([b1, b2, b3, b4])


@application("googlenet")
def googlenet(inputs, transform_input=False, bn_eps=BASIC_CONV2D_BN_EPS):
    """GoogLeNet, NHWC input normalised like the PyTorch source; returns logits by default.

    `transform_input` must equal the torch model's flag (True for torchvision's pretrained
    weights). `bn_eps` is torchvision's 1e-3. `features_only=True` returns `stage1` (stride 4) ...
    `stage4` (stride 32).
    """
    cfg = Settings(bn_eps=bn_eps)
    x = transform_input_layer(inputs) if transform_input else inputs
    x = basic_conv2d(x, 64, 7, stride=2, padding=3, cfg=cfg, name="conv1")
    x = TorchMaxPool2D(3, 2, ceil_mode=True, name="maxpool1")(x)
    x = basic_conv2d(x, 64, 1, cfg=cfg, name="conv2")
    x = basic_conv2d(x, 192, 3, padding=1, cfg=cfg, name="conv3")
    x = stage_end(x, "stage1", 4)
    for s, (pool_kernel, blocks) in enumerate(_STAGES, start=2):
        x = TorchMaxPool2D(pool_kernel, 2, ceil_mode=True, name=f"maxpool{s}")(x)
        for block_name, *channels in blocks:
            x = _inception(x, *channels, cfg=cfg, name=block_name)
        x = stage_end(x, f"stage{s}", 2 ** (s + 1))
    # torch: avgpool -> flatten -> dropout(0.2, identity in eval) -> fc
    return x
