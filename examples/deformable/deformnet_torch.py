"""DeformNet: a small user classifier with deformable convolutions (torchvision.ops.DeformConv2d,
a compiled C++ op), the case scripts/audit.py flags as a custom op. Each deformable block predicts
its own sampling offsets and (DCN v2) modulation mask with plain convs, as torchvision expects."""
import torch
from torch import nn
from torchvision.ops import DeformConv2d


class DeformBlock(nn.Module):
    """offset conv + mask conv (sigmoid) -> DeformConv2d -> BN -> ReLU."""

    def __init__(self, cin, cout, stride=1, groups=1, offset_groups=1):
        super().__init__()
        taps = 3 * 3 * offset_groups
        self.offset = nn.Conv2d(cin, 2 * taps, 3, stride, 1)
        self.mask = nn.Conv2d(cin, taps, 3, stride, 1)
        self.deform = DeformConv2d(cin, cout, 3, stride, 1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        offset = self.offset(x)
        mask = torch.sigmoid(self.mask(x))
        return self.act(self.bn(self.deform(x, offset, mask)))


class DeformNet(nn.Module):
    def __init__(self, num_classes=10, in_chans=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        # two stages: a DCN v2 block, then a strided, grouped one with two offset groups
        self.blocks = nn.Sequential(DeformBlock(16, 32),
                                    DeformBlock(32, 48, stride=2, groups=2, offset_groups=2))
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(x.mean((2, 3)), 1))


def deformnet(num_classes=10, in_chans=3):
    return DeformNet(num_classes=num_classes, in_chans=in_chans)
