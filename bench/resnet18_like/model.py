"""A ResNet-18-shaped CNN (64-128-256-512 channels, BasicBlocks) for the benchmark.

The fixtures are tiny, so a layer there does a few multiply-adds per output value and any
per-value statistic looks expensive next to it. This model has the channel widths of the
networks people quantize, to show the calibration cost where it matters. Random weights:
the benchmark measures time, not findings.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride), conv_bn(cout, cout, relu=False))
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet18Like(nn.Module):
    def __init__(self, num_classes: int = 100) -> None:
        super().__init__()
        self.stem = conv_bn(3, 64, stride=2)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        self.stages = nn.Sequential(*[
            nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)) for cin, cout, stride in widths
        ])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return ResNet18Like().eval()
