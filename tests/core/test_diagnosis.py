"""Diagnosis settings and user metrics: the normalisations in closed form, and a user's own
metric computed as documented and used by the degraded-layer rule."""

from __future__ import annotations

import math
from types import ModuleType

import pytest
import torch

from quantlens.core.diagnosis import diagnose
from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.metrics import ErrorSums
from quantlens.core.settings import QuantSettings


def _sums(signal: float, noise: float, cross: float = 0.0) -> ErrorSums:
    """Sums for ||x||^2 = signal, ||x - q||^2 = noise (and <x, x - q> = cross)."""
    x = torch.tensor([math.sqrt(signal), 0.0], dtype=torch.float64)
    e = torch.tensor([cross / math.sqrt(signal), math.sqrt(max(noise - cross**2 / signal, 0.0))], dtype=torch.float64)
    q = x - e
    return ErrorSums(count=2, sum_xx=float(x @ x), sum_qq=float(q @ q), sum_xq=float(x @ q), sum_ee=float(e @ e))


def test_default_thresholds_all_mean_noise_10_db_below_the_signal() -> None:
    settings = DiagnosisSettings()
    at_10_db = _sums(signal=1.0, noise=0.1)  # orthogonal noise, 10 dB below the signal
    assert at_10_db.sqnr_db == pytest.approx(10.0)
    assert settings.normalised("sqnr", at_10_db) == pytest.approx(0.1)
    assert settings.normalised("mse", at_10_db) == pytest.approx(0.1)
    # q = x - e with e orthogonal: cos^2 = 1 / (1 + 0.1), so cos^2 / (1 - cos^2) = 10 -> 10 dB
    assert settings.normalised("cs", at_10_db) == pytest.approx(0.1)
    worse, better = _sums(1.0, 0.2), _sums(1.0, 0.05)
    for metric in ("sqnr", "mse", "cs"):
        assert settings.is_degraded(metric, settings.normalised(metric, worse))
        assert not settings.is_degraded(metric, settings.normalised(metric, better))


def test_direction_of_detection_is_configurable() -> None:
    settings, problems = DiagnosisSettings.from_table({
        "threshold_quantize_error": {"sqnr": 0.3},
        "is_detect_under_threshold_quantize_error": {"sqnr": False},
    })
    assert not problems
    assert settings.is_degraded("sqnr", 0.4) and not settings.is_degraded("sqnr", 0.2)


def test_user_metric_is_the_mean_over_batches_and_drives_degraded_layer(sample: ModuleType) -> None:
    from quantlens.core import analyze

    def mse(f: torch.Tensor, q: torch.Tensor) -> float:
        return float(((f.double() - q.double()) ** 2).mean())

    model, batches = sample.build(), sample.batches(2)
    result = analyze(model, batches, QuantSettings(activation_n_bits=4), metrics={"my_mse": mse})
    assert len({b.shape[0] for b in batches}) == 1  # equal batches: mean of batch means = overall mean
    for p in result.points:
        if p.cumulative is not None and p.cumulative.count:
            # the metric sums in double, the simulation's dot products in float32
            assert p.custom["my_mse"] == pytest.approx(p.cumulative.mse, rel=1e-6, abs=1e-15), p.name
    assert result.output.custom["my_mse"] == pytest.approx(result.output.error.mse, rel=1e-6)

    worst = max((p for p in result.points if "my_mse" in p.custom), key=lambda p: p.custom["my_mse"])
    limit = worst.custom["my_mse"] * 0.999
    only_mine = DiagnosisSettings(threshold_quantize_error={"my_mse": limit},
                                  is_detect_under_threshold_quantize_error={"my_mse": False})
    degraded = [f for f in diagnose(result, only_mine) if f.rule == "degraded-layer"]
    flagged = {n for f in degraded for n in f.points}
    expected = {p.name for p in result.points if p.custom.get("my_mse", 0.0) > limit and p.activation.quantize}
    assert flagged == expected and worst.name in flagged
    assert all("my_mse" in f.evidence["failed"] for f in degraded if len(f.points) == 1)
