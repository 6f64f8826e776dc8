"""A hand-written PyTorch FCN-8s, the baseline that protocaffe's lowering is timed against.

Written the way a PyTorch user would port the net by hand: nn.Conv2d / nn.MaxPool2d(ceil_mode)
/ nn.ConvTranspose2d modules and tensor slicing for the Crop layers. Parameter names follow
the Caffe layer names so protocaffe's state_dict loads into it unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

VGG_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


class HandFCN8s(nn.Module):
    def __init__(self, classes: int = 21) -> None:
        super().__init__()
        in_ch = 3
        for block, (convs, width) in enumerate(VGG_BLOCKS, start=1):
            for i in range(1, convs + 1):
                pad = 100 if (block, i) == (1, 1) else 1
                setattr(self, f"conv{block}_{i}", nn.Conv2d(in_ch, width, 3, padding=pad))
                in_ch = width
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.score_fr = nn.Conv2d(4096, classes, 1)
        self.upscore2 = nn.ConvTranspose2d(classes, classes, 4, stride=2, bias=False)
        self.score_pool4 = nn.Conv2d(512, classes, 1)
        self.upscore_pool4 = nn.ConvTranspose2d(classes, classes, 4, stride=2, bias=False)
        self.score_pool3 = nn.Conv2d(256, classes, 1)
        self.upscore8 = nn.ConvTranspose2d(classes, classes, 16, stride=8, bias=False)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        x = data
        pools = []
        for block, (convs, _) in enumerate(VGG_BLOCKS, start=1):
            for i in range(1, convs + 1):
                x = self.relu(getattr(self, f"conv{block}_{i}")(x))
            x = self.pool(x)
            pools.append(x)
        x = self.relu(self.fc6(x))
        x = self.relu(self.fc7(x))
        up2 = self.upscore2(self.score_fr(x))
        s4 = self.score_pool4(pools[3])[:, :, 5 : 5 + up2.shape[2], 5 : 5 + up2.shape[3]]
        up4 = self.upscore_pool4(up2 + s4)
        s3 = self.score_pool3(pools[2])[:, :, 9 : 9 + up4.shape[2], 9 : 9 + up4.shape[3]]
        up8 = self.upscore8(up4 + s3)
        h, w = data.shape[2:]
        return up8[:, :, 31 : 31 + h, 31 : 31 + w]
