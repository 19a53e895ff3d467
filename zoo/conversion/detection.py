"""torchvision detectors as recipe sources with named outputs.

torchvision's SSD returns a list of per-image dicts of variable length and keeps its head outputs
to itself. The source below is torchvision's own model, unchanged (same modules, same state_dict
keys, so torchvision's COCO checkpoint loads as a `--weights` file), whose forward additionally
returns the head outputs (captured with a hook on `head`) and the detections padded per image to
`detections_per_img` rows, the layout of zoo/layers/detection.py: one dict of tensors, which the
pipeline compares by name.
"""
from __future__ import annotations

from zoo.conversion.torch_first import torch, torchvision

SSD = torchvision.models.detection.ssd.SSD


def pad_detections(detections: list[dict], rows: int) -> dict:
    """torchvision's [{"boxes", "scores", "labels"}] -> {name: (B, rows, ...)} padded with zeros
    (label 0 is the background class, never a detection)."""
    out = {}
    for key, tail in (("boxes", (4,)), ("scores", ()), ("labels", ())):
        parts = []
        for d in detections:
            t = d[key][:rows]
            parts.append(torch.cat([t, t.new_zeros((rows - len(t), *tail))]))
        out[key] = torch.stack(parts)
    return out


class SSDWithHeads(SSD):
    """torchvision's SSD whose eval forward returns {"cls_logits", "bbox_regression", "boxes",
    "scores", "labels"} (module docstring); the computation is SSD.forward's."""

    def forward(self, images, targets=None):
        if self.training:
            return super().forward(images, targets)
        heads = {}
        hook = self.head.register_forward_hook(lambda _m, _args, out: heads.update(out))
        try:
            detections = super().forward(images)
        finally:
            hook.remove()
        return {**heads, **pad_detections(detections, self.detections_per_img)}


def ssdlite320_mobilenet_v3_large(**kwargs):
    """torchvision's ssdlite320_mobilenet_v3_large without downloads (weights=None,
    weights_backbone=None: the reduced-tail backbone the COCO weights also use), with named
    outputs. kwargs: torchvision's (num_classes, score_thresh, nms_thresh, ...)."""
    model = torchvision.models.get_model("ssdlite320_mobilenet_v3_large", weights=None,
                                         weights_backbone=None, **kwargs)
    model.__class__ = SSDWithHeads
    return model
