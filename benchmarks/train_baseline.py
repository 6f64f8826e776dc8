"""The benchmark nets of bench_train.py written by hand in PyTorch, trained with a plain loop.

This is what a PyTorch user would write for the same two nets: nn.Modules, torch.optim.SGD /
Adam (their own update rules, which differ from Caffe's in details that cost nothing here),
`zero_grad(); loss.backward(); step()`. bench_train.py times it against `protocaffe.Solver`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bilinear(channels: int, k: int) -> torch.Tensor:
    """Caffe's bilinear filler for a grouped Deconvolution (channels x 1 x k x k)."""
    f = (k + 1) // 2
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    r = torch.arange(k, dtype=torch.float32)
    w1 = 1 - (r / f - c).abs()
    return (w1[:, None] * w1[None, :]).expand(channels, 1, k, k).clone()


class ReducedFCN(nn.Module):
    """conv-relu-pool x2, fc6 as 3x3 conv, dropout, score, fixed bilinear x4 upsampling, crop,
    softmax loss summed over pixels (FCN's `normalize: false`, batch 1 per image)."""

    def __init__(self, classes: int = 21) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc6 = nn.Conv2d(32, 64, 3, padding=1)
        self.score = nn.Conv2d(64, classes, 1)
        self.register_buffer("up", bilinear(classes, 8))
        self.classes = classes

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2, 2, ceil_mode=True)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2, 2, ceil_mode=True)
        h = F.dropout(F.relu(self.fc6(h)), 0.5, self.training)
        s = F.conv_transpose2d(self.score(h), self.up, stride=4, groups=self.classes)
        s = s[:, :, 2 : 2 + x.shape[2], 2 : 2 + x.shape[3]]
        loss = F.cross_entropy(s, label[:, 0].long(), ignore_index=255, reduction="sum")
        return loss / x.shape[0]


class ChannelAffine(nn.Module):
    """Caffe's Scale layer with a bias: y = x * w[c] + b[c]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, x, self.weight)


class Classifier(nn.Module):
    """(conv-BN-scale-relu-pool) x2, InnerProduct, softmax loss. `literal` keeps Caffe's
    BatchNorm and Scale apart (as the prototxt has them); otherwise the idiomatic PyTorch
    BatchNorm2d with its fused affine transform."""

    def __init__(self, classes: int = 10, literal: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        if literal:
            self.bn1 = nn.Sequential(nn.BatchNorm2d(32, affine=False), ChannelAffine(32))
            self.bn2 = nn.Sequential(nn.BatchNorm2d(64, affine=False), ChannelAffine(64))
        else:
            self.bn1, self.bn2 = nn.BatchNorm2d(32), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64 * 8 * 8, classes)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2, 2, ceil_mode=True)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2, 2, ceil_mode=True)
        return F.cross_entropy(self.fc(h.flatten(1)), label.long())


def make(name: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    if name == "fcn":
        model: nn.Module = ReducedFCN()
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=1e-4, momentum=0.99, weight_decay=5e-4
        )
    else:
        model = Classifier(literal=name == "classifier-literal")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    return model.train(), opt


def step(model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    opt.zero_grad()
    loss = model(batch["data"], batch["label"])
    loss.backward()
    opt.step()
    return loss.item()
