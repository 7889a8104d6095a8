"""Rules about weights: precision lost to the weight grid, and the output shift it causes."""

from __future__ import annotations

import numpy as np

from quantlens.core.diagnosis.context import Context
from quantlens.core.diagnosis.rules_error import WIDE_BITS, keep_wide, mct
from quantlens.core.findings import Finding, Recommendation, Severity

WEIGHT_FLOOR_DB_PER_BIT = 6.02
WEIGHT_FLOOR_OFFSET_DB = 24.0
"""Weights of a trained layer quantize at about 6 dB per bit minus 7-12 dB (Gaussian-like,
clipped near 4 sigma): 40 dB at 8 bits. Under 6.02 * n - 24 dB (24 dB at 8 bits, 4 bits lost) something
stretches the grid."""
GRANULARITY_GAIN_DB = 6.0


def weight_precision(ctx: Context) -> list[Finding]:
    findings = []
    for p in ctx.points:
        w = p.weights
        if w is None or w.n_bits >= WIDE_BITS:
            continue  # the widest grid quantlens offers: there is no wider one to recommend
        floor = WEIGHT_FLOOR_DB_PER_BIT * w.n_bits - WEIGHT_FLOOR_OFFSET_DB
        worst = w.worst_channel_sqnr_db if w.worst_channel_sqnr_db is not None else w.sqnr_db
        if worst >= floor:
            continue
        other = w.per_channel_worst_channel_sqnr_db
        switch = other is not None and other - worst >= GRANULARITY_GAIN_DB
        spread = _channel_spread(w.thresholds) if w.per_channel else None
        cause = ("one threshold for all output channels, whose ranges differ" if not w.per_channel else
                 f"per-channel thresholds spread {spread:.0f}x" if spread and spread > 16 else "a heavy-tailed weight "
                 "distribution")
        if w.folded_bn:
            cause += f" (BatchNorm {w.folded_bn} folded in: a channel with a tiny running_var scales its weights up)"
        if switch:
            recommendation = Recommendation(
                "Quantize the weights per output channel: each channel gets a grid fitted to its own range.",
                config={"weights_per_channel_threshold": True},
                mct=mct(weights_per_channel_threshold=True),
            )
            predicted = (f"per-channel thresholds would raise the worst channel's weight SQNR from {worst:.1f} dB "
                         f"to {other:.1f} dB")
        else:
            recommendation = Recommendation(
                "Keep this layer's weights at more bits, or fix the range at its source (re-estimate or clamp the "
                "BatchNorm variance of dead channels before folding).",
                config=keep_wide([p.name]),
            )
            predicted = None
        findings.append(Finding(
            rule="weight-precision",
            severity=Severity.WARNING,
            message=(f"{p.name}'s {w.n_bits}-bit weights keep only {worst:.1f} dB SQNR in their worst output channel "
                     f"(under {floor:.1f} dB; {w.sqnr_db:.1f} dB over the tensor): {cause}"),
            points=(p.name,),
            locations=ctx.locations(p),
            evidence={"worst_channel_sqnr_db": worst, "weights_sqnr_db": w.sqnr_db, "floor_db": floor,
                      "per_channel": w.per_channel, "per_channel_worst_channel_sqnr_db": other,
                      "min": w.min, "max": w.max, "std": w.std, "folded_bn": w.folded_bn},
            recommendation=recommendation,
            predicted=predicted,
        ))
    return findings


def _channel_spread(thresholds: np.ndarray) -> float:
    t = np.asarray(thresholds, dtype=np.float64)
    t = t[t > 0]
    return float(t.max() / t.min()) if len(t) else 1.0


def bias_correction(ctx: Context) -> list[Finding]:
    findings = []
    for p in ctx.quantized:
        w = p.weights
        if w is None or w.bias_shift is None or not len(w.bias_shift) or p.activation.std <= 0:
            continue
        ratio = float(np.max(np.abs(w.bias_shift)) / p.activation.std)
        if ratio <= ctx.settings.bias_shift_ratio:
            continue
        worst = [int(i) for i in np.argsort(-np.abs(w.bias_shift))[:3]]
        corrected = w.bias_corrected
        findings.append(Finding(
            rule="bias-correction",
            severity=Severity.INFO if corrected else Severity.WARNING,
            message=(f"weight quantization shifts the mean of {p.name}'s output channels by up to "
                     f"{100 * ratio:.0f}% of its std (channels {', '.join(map(str, worst))}); "
                     + ("bias correction removes it" if corrected else "bias correction is off")),
            points=(p.name,),
            locations=ctx.locations(p),
            evidence={"max_shift_over_std": ratio, "worst_channels": worst,
                      "shifts": [float(w.bias_shift[i]) for i in worst], "bias_corrected": corrected},
            recommendation=Recommendation(
                "Keep bias correction on: it subtracts (Wq - W) . E[x] from the bias." if corrected else
                "Turn on bias correction: it subtracts the mean output shift (Wq - W) . E[x] from the bias.",
                config={} if corrected else {"weights_bias_correction": True},
                mct=mct(weights_bias_correction=True),
            ),
        ))
    return findings
