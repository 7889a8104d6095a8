"""Benchmark inputs: 2 batches of 16 images of 3x64x64 from a seeded generator."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def calibration_batches() -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        yield torch.randn(16, 3, 64, 64, generator=g)
