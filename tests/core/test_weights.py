"""Weight thresholds against a brute-force search over each channel's raw values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from quantlens.core.settings import QuantSettings
from quantlens.core.thresholds import ErrorMethod
from quantlens.core.torch_engine.pipeline import analyze_model
from quantlens.core.weights import quantize_weights
from torch import nn


def _fq(x: np.ndarray, t, n_bits: int) -> np.ndarray:
    """MCT's signed quantizer written out again (independent of quantlens.core.quantizer)."""
    step = np.asarray(t, dtype=np.float64) / 2.0 ** (n_bits - 1)
    return np.clip(np.round(x / step), -(2.0 ** (n_bits - 1)), 2.0 ** (n_bits - 1) - 1) * step


def _brute_force(row: np.ndarray, n_bits: int, power: float) -> float:
    """The power-of-two candidate (17 octaves down from the covering one) of least mean
    |error|^power; ties go to the larger."""
    k = math.ceil(math.log2(np.abs(row).max()))
    cands = 2.0 ** np.arange(k, k - 17, -1)
    errs = np.array([np.mean(np.abs(_fq(row, c, n_bits) - row) ** power) for c in cands])
    return float(cands[np.flatnonzero(errs <= errs.min() * (1 + 1e-9))[0]])


@pytest.mark.parametrize(("method", "power"), [(ErrorMethod.MSE, 2.0), (ErrorMethod.MAE, 1.0), (ErrorMethod.LP, 3.0)])
@pytest.mark.parametrize("n_bits", [8, 4])
def test_channel_thresholds_match_brute_force(method, power, n_bits):
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, size=(6, 3, 3, 3)) * 0.1
    _, report = quantize_weights("conv", w, 0, n_bits, method, l_p_value=power)
    for row, t in zip(w.reshape(6, -1), report.thresholds):
        assert t == _brute_force(row, n_bits, power)


def test_a_dead_output_channel_is_quantized_to_zeros_and_the_rest_searched():
    """A pruned (all-zero) output channel has no range to search: threshold 1.0, weights
    still zero; the live channels keep their own search (this used to raise in np.stack)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[0].weight[1] = 0.0
    g = torch.Generator().manual_seed(1)
    result = analyze_model(model, lambda: [torch.randn(16, 8, generator=g) for _ in range(3)], QuantSettings(), [])
    report = next(p for p in result.points if p.info.weight_module == "0").weights
    w = model[0].weight.detach().numpy().astype(np.float64)
    assert report.thresholds[1] == 1.0
    for i in (0, 2, 3):
        assert report.thresholds[i] == _brute_force(w[i], 8, 2.0)
    wq, _ = quantize_weights("0", w, 0, 8)
    assert not wq[1].any()
