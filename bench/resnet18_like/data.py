"""Benchmark inputs: batches of 16 images of 3x64x64 from a seeded generator.

``calibration_batches`` (the config's) yields 2; ``eight_batches`` as many as every fixture
has, for the stage bench's row where the simulation covers a quarter of the data, as it does
on the fixtures (``num_simulation_batches`` = 2)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def calibration_batches(count: int = 2) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    for _ in range(count):
        yield torch.randn(16, 3, 64, 64, generator=g)


def eight_batches() -> Iterator[torch.Tensor]:
    return calibration_batches(8)
