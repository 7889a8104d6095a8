"""Diagnosis settings: ``[tool.quantlens.diagnosis]``, with XQuantConfig's names and values.

Degraded-layer metrics are normalised so XQuant's default of 0.1 means the same thing for
all three, "the quantization noise is 10 dB below the signal":

* ``mse``:  normalised MSE, ||x - q||^2 / ||x||^2; flagged above the threshold (0.1 = 10 dB);
* ``sqnr``: SQNR in dB divided by 100; flagged under the threshold (0.1 = 10 dB);
* ``cs``:   the SNR a cosine similarity implies for noise orthogonal to the signal,
  cos^2 / (1 - cos^2), in dB divided by 100; flagged under (0.1 = cosine 0.9535).

Set e.g. ``threshold_quantize_error = {sqnr = 0.3}`` to flag points under 30 dB.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from quantlens.core.metrics import ErrorSums


@dataclass(frozen=True)
class DiagnosisSettings:
    threshold_quantize_error: dict[str, float] = field(default_factory=lambda: {"mse": 0.1, "cs": 0.1, "sqnr": 0.1})
    is_detect_under_threshold_quantize_error: dict[str, bool] = field(
        default_factory=lambda: {"mse": False, "cs": True, "sqnr": True})
    threshold_degrade_layer_ratio: float = 0.5
    threshold_zscore_outlier_removal: float = 5.0
    threshold_ratio_unbalanced_concatenation: float = 16.0
    threshold_bitwidth_mixed_precision_with_model_output_loss_objective: int = 2
    iqr_outlier_share: float = 0.05
    """The DeiT outlier study's significance cut for the 1.5*IQR outlier share."""
    candidate_z_thresholds: tuple[float, ...] = (3.0, 5.0, 9.0, 12.0, 20.0, 40.0)
    min_samples: int = 64
    """Fewer calibration samples than this is flagged as too small a representative dataset."""
    unstable_share: float = 0.1
    """Flag the dataset when more than this share of points change threshold between halves."""
    mismatch_mean_shift: float = 0.5
    """Validation mean shift, in calibration standard deviations, that counts as a mismatch."""
    mismatch_clipped_share: float = 0.001
    """Share of validation values beyond the calibration threshold that counts as a mismatch."""
    bias_shift_ratio: float = 0.05
    """Output mean shift, relative to the point's standard deviation, worth correcting."""
    divergence_jump_db: float = 6.0
    sensitivity_output_sqnr_db: float = 30.0
    """Rank the sensitive layers only when the model output is below this SQNR (or a layer is degraded)."""
    calibrator_margin_db: float = 3.0
    min_fix_gain_db: float = 1.0
    """A recommended change must raise the re-simulated output SQNR by this much to be recommended."""
    max_verified_changes: int = 6
    """Changes re-simulated per run (each costs one quantized pass over the simulation batches)."""
    shift_negative_min_gain_db: float = 1.0
    top_n: int = 5

    @staticmethod
    def from_table(table: dict[str, Any]) -> tuple[DiagnosisSettings, list[tuple[str, str]]]:
        """Settings from the user's table, and (key, message) for every bad entry."""
        problems: list[tuple[str, str]] = []
        args: dict[str, Any] = {}
        defaults = DiagnosisSettings()
        names = {f.name: f for f in dataclasses.fields(DiagnosisSettings)}
        for key, value in table.items():
            if key not in names:
                problems.append((key, f"unknown diagnosis setting {key!r}"))
                continue
            default = getattr(defaults, key)
            try:
                args[key] = _coerce(key, value, default)
            except ValueError as exc:
                problems.append((key, str(exc)))
        return DiagnosisSettings(**args), problems

    def normalised(self, metric: str, sums: ErrorSums) -> float:
        """A point's score on one of XQuant's metrics, normalised as the module docstring says."""
        if metric == "mse":
            if sums.sum_xx <= 0:
                return 0.0 if sums.sum_ee <= 0 else math.inf
            return sums.sum_ee / sums.sum_xx
        if metric == "sqnr":
            return sums.sqnr_db / 100.0
        c = min(max(sums.cosine, 0.0), 1.0 - 1e-15)
        return 10.0 * math.log10(max(c * c, 1e-300) / (1.0 - c * c)) / 100.0

    def is_degraded(self, metric: str, score: float) -> bool:
        limit = self.threshold_quantize_error.get(metric)
        if limit is None:
            return False
        under = self.is_detect_under_threshold_quantize_error.get(metric, metric != "mse")
        return score < limit if under else score > limit


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a table such as {{mse = 0.1, cs = 0.1, sqnr = 0.1}}")
        merged = dict(default)
        for metric, item in value.items():
            if isinstance(next(iter(default.values())), bool):
                if not isinstance(item, bool):
                    raise ValueError(f"{key}.{metric} must be true or false")
            elif isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ValueError(f"{key}.{metric} must be a number")
            merged[str(metric)] = item
        return merged
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and v > 0 for v in value):
            raise ValueError(f"{key} must be a list of positive numbers")
        return tuple(float(v) for v in value)
    if isinstance(default, bool) or isinstance(value, bool):
        raise ValueError(f"{key} must be a number")
    if isinstance(default, int):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive whole number")
        return value
    if not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{key} must be a positive number")
    return float(value)
