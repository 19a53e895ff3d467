"""Small PyTorch models for the audit tests: things zoo cannot convert, on purpose."""
import torch
import torchvision
from torch import nn


class ClampFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad


class Detector(nn.Module):
    """Deformable conv, a custom autograd Function, roi_align and nms (all C/C++-backed)."""

    def __init__(self):
        super().__init__()
        self.offsets = nn.Conv2d(3, 18, 3, padding=1)
        self.dconv = torchvision.ops.DeformConv2d(3, 8, 3, padding=1)
        self.act = nn.Softplus()
        self.pad = nn.ZeroPad2d(1)        # Keras twins under other names / the same name:
        self.mix = nn.Conv1d(8, 8, 1)     # to be classified as such, not "re-implement"

    def forward(self, x):
        y = ClampFn.apply(self.dconv(self.pad(x)[..., 1:-1, 1:-1], self.offsets(x)))
        y = self.mix(y.flatten(2)).view_as(y)
        boxes = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0], [0.0, 1.0, 1.0, 5.0, 5.0]])
        keep = torchvision.ops.nms(boxes[:, 1:], torch.tensor([0.9, 0.8]), 0.5)
        r = torchvision.ops.roi_align(y, boxes[keep], output_size=2)
        return self.act(r).flatten(1)


def detector(**kwargs):
    return Detector()


def plain(**kwargs):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
