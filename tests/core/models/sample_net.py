"""Test model: every construct the discovery must handle, with marker comments on lines."""

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),  # @helper-conv
        nn.BatchNorm2d(cout),  # @helper-bn
        nn.ReLU6(),
    )


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = conv_bn(c, c)  # @block-body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)  # @block-add


class SampleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8)  # @stem
        self.blocks = nn.ModuleList([Block(8) for _ in range(2)])  # @blocks
        self.side = nn.Conv2d(8, 8, 1)  # @side
        self.lonely_bn = nn.BatchNorm2d(16)  # @lonely-bn
        self.gelu = nn.GELU()  # @gelu
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)  # @library
        self.fc = nn.Linear(16, 10)  # @fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        y = F.relu(self.side(x))  # @functional-relu
        z = torch.cat([x, y], dim=1)  # @cat
        z = self.gelu(self.lonely_bn(z))
        tokens = z.flatten(2).transpose(1, 2)
        tokens = self.encoder(tokens)  # @encoder-call
        pooled = tokens.mean(dim=1)
        return self.fc(pooled)


def build() -> nn.Module:
    torch.manual_seed(0)
    model = SampleNet()
    with torch.no_grad():  # realistic BN statistics
        model.train()
        g = torch.Generator().manual_seed(3)
        for _ in range(3):
            model(torch.randn(8, 3, 8, 8, generator=g))
    return model.eval()


def batches(n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(n)]


def line_of(marker: str) -> int:
    """1-based line of ``# @marker`` in this file."""
    with open(__file__, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.rstrip().endswith(f"# @{marker}"):
                return number
    raise KeyError(marker)
