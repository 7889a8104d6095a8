"""Weight quantization: per-channel (or per-tensor) symmetric thresholds on raw weights.

Weights are small next to activations over a dataset, so the search runs on the raw values
(exact for every method but KL, which needs a histogram and uses the shared search).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantlens.core.distribution import Distribution
from quantlens.core.metrics import sqnr_from_sums
from quantlens.core.quantizer import fake_quantize
from quantlens.core.thresholds import ErrorMethod, argmin_prefer_large_rows, candidate_rows, search_threshold


@dataclass(frozen=True)
class WeightReport:
    """How one layer's weights fare under quantization."""

    module: str
    shape: tuple[int, ...]
    channel_axis: int
    n_bits: int
    error_method: str
    per_channel: bool
    thresholds: np.ndarray
    """One threshold per output channel (a single one when per-tensor)."""
    mean: float
    std: float
    min: float
    max: float
    mse: float
    sqnr_db: float
    change_score: float
    """DeiT outlier study: |mean(Wq)-mean(W)|/|mean(W)| + |std(Wq)-std(W)|/std(W)."""
    folded_bn: str | None = None
    bias_shift: np.ndarray | None = None
    """Per output channel: mean output change caused by weight quantization, (Wq - W) . E[x]."""
    bias_corrected: bool = False
    worst_channel_sqnr_db: float | None = None
    """The lowest SQNR of one output channel: the tensor's SQNR is dominated by its largest
    channels, so it hides the small channels a per-tensor grid flattens."""
    per_channel_worst_channel_sqnr_db: float | None = None
    """With per-tensor thresholds configured: the worst channel's SQNR per-channel thresholds
    would give, so a finding can predict the switch without another pass (None when
    per-channel is configured already)."""

    def to_json(self) -> dict:
        return {
            "module": self.module,
            "shape": list(self.shape),
            "channel_axis": self.channel_axis,
            "n_bits": self.n_bits,
            "error_method": self.error_method,
            "per_channel": self.per_channel,
            "thresholds": [float(t) for t in self.thresholds],
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "mse": self.mse,
            "sqnr_db": self.sqnr_db,
            "change_score": self.change_score,
            "folded_bn": self.folded_bn,
            "bias_shift": None if self.bias_shift is None else [float(v) for v in self.bias_shift],
            "bias_corrected": self.bias_corrected,
            "worst_channel_sqnr_db": self.worst_channel_sqnr_db,
            "per_channel_worst_channel_sqnr_db": self.per_channel_worst_channel_sqnr_db,
        }


def quantize_weights(
    module: str,
    weight: np.ndarray,
    channel_axis: int,
    n_bits: int = 8,
    method: ErrorMethod = ErrorMethod.MSE,
    *,
    per_channel: bool = True,
    l_p_value: float = 2.0,
    power_of_two: bool = True,
    folded_bn: str | None = None,
) -> tuple[np.ndarray, WeightReport]:
    """Quantized weights and the report; ``weight`` is already BN-folded where deployed so."""
    w = np.asarray(weight, dtype=np.float64)
    wq, thresholds = _quantize(w, channel_axis, per_channel, n_bits, method, l_p_value, power_of_two)
    alternative = None
    if not per_channel:
        per_channel_wq, _ = _quantize(w, channel_axis, True, n_bits, method, l_p_value, power_of_two)
        alternative = _worst_channel_sqnr_db(*_channel_energy(w, per_channel_wq, channel_axis))
    mean, std = float(w.mean()), float(w.std())
    signal, noise = _channel_energy(w, wq, channel_axis)
    change = abs(float(wq.mean()) - mean) / max(abs(mean), 1e-12) + abs(float(wq.std()) - std) / max(std, 1e-12)
    report = WeightReport(
        module=module,
        shape=tuple(int(s) for s in w.shape),
        channel_axis=channel_axis,
        n_bits=n_bits,
        error_method=method.value,
        per_channel=per_channel,
        thresholds=thresholds,
        mean=mean,
        std=std,
        min=float(w.min()),
        max=float(w.max()),
        mse=float(noise.sum()) / max(w.size, 1),
        sqnr_db=sqnr_from_sums(float(signal.sum()), float(noise.sum())),
        change_score=change,
        folded_bn=folded_bn,
        worst_channel_sqnr_db=_worst_channel_sqnr_db(signal, noise),
        per_channel_worst_channel_sqnr_db=alternative,
    )
    return wq, report


BLOCK_VALUES = 1 << 16
"""Weights searched a block at a time (512 KiB of float64): the block stays in cache across
the candidates."""
DEAD_CHANNEL_RMS = 1e-4
"""Channels whose RMS is below this share of the largest channel's carry no signal to lose."""


def _channel_rows(w: np.ndarray, channel_axis: int) -> np.ndarray:
    """One row per output channel."""
    return np.moveaxis(w, channel_axis, 0).reshape(w.shape[channel_axis], -1)


def _channel_energy(w: np.ndarray, wq: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel, the sum of w^2 and of (wq - w)^2: the layer's MSE and SQNR and its
    worst channel's all come from these two sums (one pass over the weights, not three)."""
    rows, q_rows = _channel_rows(w, channel_axis), _channel_rows(wq, channel_axis)
    delta = q_rows - rows
    return np.einsum("ij,ij->i", rows, rows), np.einsum("ij,ij->i", delta, delta)


def _worst_channel_sqnr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """The lowest SQNR of a live channel (:data:`DEAD_CHANNEL_RMS`), from :func:`_channel_energy`."""
    live = signal > (DEAD_CHANNEL_RMS**2) * signal.max() if signal.max() > 0 else np.zeros(len(signal), bool)
    if not live.any():
        return float("inf")
    with np.errstate(divide="ignore"):
        per_channel = 10.0 * np.log10(signal[live] / noise[live])
    return float(min(per_channel.min(), 200.0))


def _quantize(w: np.ndarray, channel_axis: int, per_channel: bool, n_bits: int, method: ErrorMethod,
              l_p_value: float, power_of_two: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fake-quantized weights and their thresholds (one per output channel, or one)."""
    rows = _channel_rows(w, channel_axis) if per_channel else w.reshape(1, -1)
    if method is ErrorMethod.KL:
        thresholds = np.array([_row_threshold(r, n_bits, method, l_p_value, power_of_two) for r in rows])
    else:
        thresholds = _vector_thresholds(rows, n_bits, method, l_p_value, power_of_two)
    q_rows = fake_quantize(rows, thresholds[:, None], n_bits, True)
    if not per_channel:
        return q_rows.reshape(w.shape), thresholds
    shape = list(np.moveaxis(w, channel_axis, 0).shape)
    return np.moveaxis(q_rows.reshape(shape), 0, channel_axis), thresholds


def output_mean_shift(weight: np.ndarray, quantized: np.ndarray, input_mean: np.ndarray, groups: int = 1) -> np.ndarray:
    """(Wq - W) . E[x] per output channel, for linear (O, I) and conv (O, I/groups, *k) weights."""
    delta = (np.asarray(quantized, dtype=np.float64) - np.asarray(weight, dtype=np.float64))
    delta = delta.reshape(delta.shape[0], delta.shape[1], -1).sum(axis=2)  # (O, I/groups)
    out_channels, per_group = delta.shape
    mean = np.asarray(input_mean, dtype=np.float64).reshape(groups, per_group)
    group_of = np.arange(out_channels) // max(out_channels // groups, 1)
    return np.einsum("oi,oi->o", delta, mean[group_of])


def _row_threshold(row: np.ndarray, n_bits: int, method: ErrorMethod, p: float, pot: bool) -> float:
    return search_threshold(
        Distribution.from_values(row), method, n_bits, l_p_value=p, power_of_two=pot, signed=True
    ).threshold


def _vector_thresholds(rows: np.ndarray, n_bits: int, method: ErrorMethod, p: float, pot: bool) -> np.ndarray:
    """All channels at once: one pass over the weights per candidate index. A channel of
    zeros (pruned, or dead) has the one candidate 1.0 (any threshold quantizes it exactly),
    as has one with a NaN/Inf weight; the others are searched together."""
    max_abs = np.abs(rows).max(axis=1)
    live = (max_abs > 0) & np.isfinite(max_abs)
    if live.all():
        return _searched_thresholds(rows, max_abs, n_bits, method, p, pot)
    thresholds = np.ones(len(rows))  # candidate_thresholds' one candidate for a channel without a range
    if live.any():
        thresholds[live] = _searched_thresholds(rows[live], max_abs[live], n_bits, method, p, pot)
    return thresholds


def _searched_thresholds(rows: np.ndarray, max_abs: np.ndarray, n_bits: int, method: ErrorMethod, p: float,
                         pot: bool) -> np.ndarray:
    """The thresholds of channels whose largest |weight| is positive and finite.

    Candidates run from the largest down, and a block of channels stops at the first one no
    later candidate can beat (:func:`_clipping_floor`): the same choice as scoring all 17 (257
    free), in two or three passes over the weights at 8 bits."""
    cands = candidate_rows(max_abs, pot)  # (C, K)
    if method is ErrorMethod.NOCLIPPING:
        covering = cands >= max_abs[:, None]
        last = covering.shape[1] - 1 - np.argmax(covering[:, ::-1], axis=1)
        return cands[np.arange(len(rows)), np.where(covering.any(axis=1), last, 0)]
    power = {ErrorMethod.MSE: 2.0, ErrorMethod.MAE: 1.0}.get(method, p)
    floor = _clipping_floor(max_abs, cands, power, rows.shape[1])
    errors = np.full_like(cands, np.inf)  # a candidate never scored has lost
    levels = 2.0 ** (n_bits - 1)
    steps = cands / levels  # all positive: these channels have a range
    inverse = 1.0 / steps if pot else None  # x * 2^-k is x / 2^k exactly; a multiply is cheaper
    block = max(1, BLOCK_VALUES // max(rows.shape[1], 1))
    buffer = np.empty((min(block, len(rows)), rows.shape[1]), dtype=np.float64)
    for start in range(0, len(rows), block):
        part = rows[start:start + block]
        error = buffer[:len(part)]
        best = np.full(len(part), np.inf)
        for k in range(cands.shape[1]):
            if np.all(floor[start:start + block, k] > best):
                break
            # fake_quantize's arithmetic in place, a block of channels at a time: a large
            # model's weights pass through it once per candidate, and the temporaries and
            # trips to memory cost more than the arithmetic
            step = steps[start:start + block, k:k + 1]
            if inverse is None:
                np.divide(part, step, out=error)
            else:
                np.multiply(part, inverse[start:start + block, k:k + 1], out=error)
            np.round(error, out=error)
            np.clip(error, -levels, levels - 1, out=error)
            error *= step
            error -= part
            if power == 2.0:
                np.multiply(error, error, out=error)
            else:
                np.abs(error, out=error)
                if power != 1.0:
                    np.power(error, power, out=error)
            scored = errors[start:start + block, k] = np.mean(error, axis=1)
            np.minimum(best, scored, out=best)
    return cands[np.arange(len(rows)), argmin_prefer_large_rows(errors)]


FLOOR_MARGIN = 1e-6
"""How far above a channel's best error a candidate's floor must lie to be passed over: far
beyond the rounding of the scored means (~1e-13) and the tie tolerance (TIE_RTOL)."""


def _clipping_floor(max_abs: np.ndarray, cands: np.ndarray, power: float, values: int) -> np.ndarray:
    """A lower bound on each candidate's error, (C, K): at a threshold t below a channel's
    largest |w|, that weight alone is clipped by at least |w| - t (the grid's ends are -t and
    t - step), so the mean error is at least (|w| - t)^p / n; it only grows as t falls, so
    once it passes the best error scored, every later candidate loses too. Lowered by
    FLOOR_MARGIN, so that a candidate is skipped only when it is certain to lose."""
    gap = np.maximum(max_abs[:, None] - cands, 0.0)
    return gap**power / values / (1.0 + FLOOR_MARGIN)
