"""MNASNet-B1 (torchvision `mnasnet.py`; timm's `mnasnet_100` is a different implementation and is
not in the catalogue). Target of recipes/mnasnet.yaml.

Stages: stage1 = the stem's depthwise-separable conv (torchvision layers.0-7), stage2-7 = the six
inverted-residual stacks (layers.8-13); then the 1x1 head conv (layers.14-16). Every BatchNorm has
torchvision's momentum 1 - 0.9997 (Keras momentum 0.9997) and the default eps 1e-5.
"""
from __future__ import annotations

from zoo.models.blocks import (
    Settings,
    application,
    cna_names,
    conv_norm_act,
    depthwise_separable,
    inverted_residual,
    pooled_top,
    stage_end,
)

TORCH_BN_MOMENTUM = 1 - 0.9997

# (out channels, kernel, first stride, expansion, repeats) per stack, for alpha = 1.0
_STACKS = ((24, 3, 2, 3, 3), (40, 5, 2, 3, 3), (80, 5, 2, 6, 3), (96, 3, 1, 6, 2),
           (192, 5, 2, 6, 4), (320, 3, 1, 6, 1))


@application("mnasnet1_0")
def mnasnet(inputs, dropout=0.2):
    """MNASNet 1.0 (ReLU, no squeeze-excite), NHWC input normalised like torchvision; logits out.

    `include_top=False` ends after the 1x1 head conv (1280 channels). `features_only=True`
    returns the 7 stage outputs.
    """
    cfg = Settings(bn_momentum=TORCH_BN_MOMENTUM)
    x = conv_norm_act(inputs, 32, 3, 2, cfg=cfg, names=cna_names("stem"))
    # depthwise-separable: no activation after the pointwise conv, no residual (32 -> 16)
    x = depthwise_separable(x, 16, 3, 1, prefix="stem", cfg=cfg,
                            names=("conv_dw", "bn_dw", "act_dw", "conv_pw", "bn_pw", None))
    x = stage_end(x, "stage1", 2)
    reduction = 2
    for s, (out, kernel, stride, exp, repeats) in enumerate(_STACKS, start=2):
        for b in range(repeats):
            x = inverted_residual(x, x.shape[-1] * exp, out, kernel, stride if b == 0 else 1,
                                  cfg=cfg, prefix=f"stage{s}_block{b}")
        reduction *= stride
        x = stage_end(x, f"stage{s}", reduction)
    x = conv_norm_act(x, 1280, 1, cfg=cfg, names=cna_names("head"))
    return x, pooled_top(dropout)
