"""TinyNet: a small PyTorch classifier that is in neither timm nor torchvision, used by
docs/adding-a-recipe.md to walk through adding an architecture to zoo."""
import torch
from torch import nn


class Block(nn.Module):
    """Depthwise 3x3 -> BN -> GELU -> pointwise 1x1 -> BN, with a residual when shapes allow."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.act = nn.GELU()
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.bn2(self.pw(self.act(self.bn1(self.dw(x)))))
        return x + y if self.residual else y


class TinyNet(nn.Module):
    def __init__(self, num_classes=10, in_chans=3, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for w in widths:
            blocks += [Block(cin, w, 2 if w != cin else 1), Block(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(x.mean((2, 3)), 1))


def tinynet(num_classes=10, in_chans=3):
    return TinyNet(num_classes=num_classes, in_chans=in_chans)
