"""Rules about value ranges: outliers, negative tails, concatenations, products, norms.

Each rule predicts the effect of its fix from the histogram where it can, so the message
says what the change would buy before anything is rerun.
"""

from __future__ import annotations

import math

import numpy as np

from quantlens.core.activations import SHIFT_NEGATIVE_ACTIVATIONS, shift_for
from quantlens.core.diagnosis.context import Context
from quantlens.core.diagnosis.rules_error import keep_wide, mct
from quantlens.core.findings import Finding, Recommendation, Severity

BULK_GAIN_DB = 12.0
"""An outlier finding needs the bulk to gain two power-of-two steps (12 dB) from clipping."""
BULK_FLOOR_BITS = 4
"""...and the bulk must be left with less than a 4-bit quantizer's SQNR (6.02 * 4 dB)."""
ACCEPTABLE_LOSS_DB = 6.0
"""A z_threshold is recommended only when all values together lose at most this much."""
NORM_INPUT_Z = 10.0


def outliers_zscore(ctx: Context) -> list[Finding]:
    findings = []
    z_cut = ctx.settings.threshold_zscore_outlier_removal
    for p in ctx.quantized:
        z_max = ctx.z_max(p)
        if z_max <= z_cut:
            continue
        a = p.activation
        dist = ctx.dist(p)
        bulk = ctx.part(p, "bulk")
        current_all = a.predicted_sqnr_db
        current_bulk = ctx.sqnr_at(p, a.threshold, "bulk")
        if current_bulk >= 6.02 * BULK_FLOOR_BITS:  # the bulk is served: no search can make a finding
            continue
        searched = dist.shifted(a.shift)
        table = []
        for z in ctx.settings.candidate_z_thresholds:
            t = ctx.search(p, "all", z_threshold=z, signed=a.signed, shift=a.shift)
            table.append({"z": z, "threshold": t, "sqnr_db": ctx.sqnr_at(p, t), "bulk_sqnr_db": ctx.sqnr_at(p, t, "bulk"),
                          "clipped_fraction": searched.mass_outside(-t if a.signed else 0.0, t)})
        best_any = max(table, key=lambda row: (row["bulk_sqnr_db"], row["z"]))
        if best_any["bulk_sqnr_db"] - current_bulk < BULK_GAIN_DB:
            continue
        acceptable = [row for row in table if row["sqnr_db"] >= current_all - ACCEPTABLE_LOSS_DB]
        best = max(acceptable, key=lambda row: (row["bulk_sqnr_db"], row["z"])) if acceptable else None
        bulk_share = 1.0 - bulk.count / dist.count if dist.count else 0.0
        if best is not None and best["bulk_sqnr_db"] - current_bulk >= BULK_GAIN_DB:
            recommendation = Recommendation(
                f"Remove outliers before the threshold search (z_threshold = {best['z']:g}), or keep this layer at "
                "16 bits if the outliers carry information (massive activations in transformers often do).",
                config={"z_threshold": best["z"]},
                mct=mct(z_threshold=best["z"]),
            )
            predicted = (f"z_threshold={best['z']:g} would move the threshold from {a.threshold:g} to "
                         f"{best['threshold']:g} and raise the SQNR of the bulk from {current_bulk:.1f} dB to "
                         f"{best['bulk_sqnr_db']:.1f} dB (all values: {current_all:.1f} -> {best['sqnr_db']:.1f} dB)")
        else:
            recommendation = Recommendation(
                "The outliers carry much of the signal: clipping them (any z_threshold) costs more than it gives. "
                "Keep this point at 16 bits, or remove the outlier channels at their source (the DeiT outlier "
                "study traces them to a few weights of the layer that produces them).",
                config=keep_wide([p.name]),
            )
            predicted = (f"z_threshold={best_any['z']:g} would raise the bulk's SQNR from {current_bulk:.1f} to "
                         f"{best_any['bulk_sqnr_db']:.1f} dB but drop all values' SQNR from {current_all:.1f} to "
                         f"{best_any['sqnr_db']:.1f} dB; 16 bits keeps both")
        findings.append(Finding(
            rule="outliers-zscore",
            severity=Severity.WARNING,
            message=(f"{p.name} has outliers {z_max:.0f} standard deviations from the mean; they set the threshold "
                     f"to {a.threshold:g} and leave the bulk ({100 * (1 - bulk_share):.1f}% of the values) "
                     f"{current_bulk:.1f} dB SQNR"),
            points=(p.name,),
            locations=ctx.locations(p),
            evidence={"z_max": z_max, "mean": a.mean, "std": a.std, "min": a.min, "max": a.max,
                      "threshold": a.threshold, "bulk_sqnr_db": current_bulk, "sqnr_db": current_all,
                      "outside_bulk_fraction": bulk_share, "candidates": table},
            recommendation=recommendation,
            predicted=predicted,
        ))
    return findings


def outliers_iqr(ctx: Context) -> list[Finding]:
    """Heavy-tailed points by Tukey's fences. Probability outputs (softmax, sigmoid and
    concatenations of them) are left out: their range is [0, 1] whatever the data, and a
    sparse one (most mass near 0) has quartiles near 0, so every confident prediction lies
    beyond 1.5 IQR without being a tail that stretches the grid."""
    share = ctx.settings.iqr_outlier_share
    ranked = sorted((p for p in ctx.quantized if not ctx.is_probability(p)), key=lambda p: -p.activation.iqr_outlier_fraction)
    flagged = [p for p in ranked if p.activation.iqr_outlier_fraction > share]
    top = [{"point": p.name, "iqr_outlier_fraction": p.activation.iqr_outlier_fraction} for p in ranked[: ctx.settings.top_n]]
    findings = []
    for rank, p in enumerate(flagged, start=1):
        a = p.activation
        findings.append(Finding(
            rule="outliers-iqr",
            severity=Severity.INFO,
            message=(f"{100 * a.iqr_outlier_fraction:.1f}% of {p.name}'s non-zero values lie beyond 1.5*IQR of the "
                     f"quartiles (significant above {100 * share:.0f}%; rank {rank} of {len(flagged)})"),
            points=(p.name,),
            locations=ctx.locations(p),
            evidence={"iqr_outlier_fraction": a.iqr_outlier_fraction, "q1": a.q1, "q3": a.q3, "rank": rank,
                      "top": top},
            recommendation=Recommendation(
                "A heavy-tailed layer: compare the error methods' thresholds for it (calibrator-comparison), "
                "try z_threshold, or keep it at 16 bits if it is also degraded.",
                config=keep_wide([p.name]),
            ),
        ))
    return findings


def shift_negative(ctx: Context) -> list[Finding]:
    settings = ctx.result.settings
    if settings.shift_negative_activation_correction:
        return []
    findings = []
    for p in ctx.quantized:
        a = p.activation
        if p.info.activation not in SHIFT_NEGATIVE_ACTIVATIONS or a.min >= 0 or a.max <= 0:
            continue
        if -a.min > 0.25 * a.max:
            continue  # a large negative part is a real signed range, not a tail
        shift = shift_for(p.info, a.min)
        t = ctx.search(p, "all", z_threshold=settings.z_threshold, signed=False, shift=shift)
        after = ctx.sqnr_at(p, t, signed=False, shift=shift)
        gain = after - a.predicted_sqnr_db
        if gain < ctx.settings.shift_negative_min_gain_db:
            continue
        used = min(1.0, -a.min / a.threshold)
        findings.append(Finding(
            rule="shift-negative",
            severity=Severity.INFO,
            message=(f"{p.name} ({p.info.activation}) is quantized signed for a negative tail of {a.min:.3g} "
                     f"against a maximum of {a.max:.3g}: the {2 ** (a.n_bits - 1)} negative levels span "
                     f"[{-a.threshold:g}, 0) and only {100 * used:.0f}% of them are used"),
            points=(p.name,),
            locations=ctx.locations(p),
            evidence={"min": a.min, "max": a.max, "negative_fraction": a.negative_fraction,
                      "negative_levels_used": used,
                      "sqnr_db": a.predicted_sqnr_db, "shifted_sqnr_db": after, "shift": shift},
            recommendation=Recommendation(
                "Shift the activation by its minimum so it quantizes unsigned, and fold the shift into the "
                "next layer's bias (MCT's shift negative activation correction).",
                config={"shift_negative_activation_correction": True},
                mct=mct(shift_negative_activation_correction=True),
            ),
            predicted=f"shift_negative_activation_correction would raise this layer's SQNR from "
                      f"{a.predicted_sqnr_db:.1f} to {after:.1f} dB (+{gain:.1f} dB)",
        ))
    return findings


def unbalanced_concat(ctx: Context) -> list[Finding]:
    findings = []
    limit = ctx.settings.threshold_ratio_unbalanced_concatenation
    for p in ctx.points:
        if p.info.op != "cat":
            continue
        s = ctx.stats(p)
        ranges = np.maximum(np.abs(s.input_min), np.abs(s.input_max))
        if len(ranges) < 2 or ranges.min() <= 0:
            continue
        ratio = float(ranges.max() / ranges.min())
        if ratio <= limit:
            continue
        small = int(np.argmin(ranges))
        big = int(np.argmax(ranges))
        factor = 2.0 ** round(math.log2(ratio))
        findings.append(Finding(
            rule="unbalanced-concat",
            severity=Severity.WARNING,
            message=(f"{p.name} concatenates inputs whose ranges differ {ratio:.0f}x (input {small}: {ranges[small]:.3g}, "
                     f"input {big}: {ranges[big]:.3g}); the smaller one gets {ratio:.0f}x fewer levels"),
            points=(p.name,),
            locations=ctx.locations(p),
            evidence={"input_ranges": [float(r) for r in ranges], "ratio": ratio, "threshold": limit,
                      "smaller_input": small, "scaling_factor": factor},
            recommendation=Recommendation(
                f"Scale input {small} up by about {factor:g} (e.g. its last conv/BN weights) and the consumer's "
                "weights down to match, move the concatenation after a layer that equalises ranges, or avoid "
                "collapsing linear/residual layers into the branch with the large range.",
            ),
            predicted=f"scaling input {small} by {factor:g} would bring the range ratio from {ratio:.0f} to "
                      f"{ratio / factor:.1f}",
            related=tuple(dict.fromkeys(  # the branches: where their ranges are made
                loc for name in p.info.inputs if name in ctx.by_name for loc in ctx.locations(ctx.by_name[name])[:1])),
        ))
    return findings


def activation_products(ctx: Context) -> list[Finding]:
    """Products of two activations. An operand that does not vary with the input (a buffer,
    a parameter, a constant computed from them) is no activation: a product with it scales
    one activation, whose error the product only carries on."""
    findings = []
    for p in ctx.quantized:
        if p.info.op not in ("mul", "matmul") or p.info.num_inputs - len(p.info.constant_inputs) < 2:
            continue
        s = ctx.stats(p)
        ranges = [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(s.input_min, s.input_max)]
        iso = p.isolated.sqnr_db if p.isolated else p.activation.predicted_sqnr_db
        kind = "attention scores" if p.info.op == "matmul" else "a gate or squeeze-excitation product"
        findings.append(Finding(
            rule="activation-product",
            severity=Severity.INFO,
            message=(f"{p.name} multiplies two activations ({kind}; inputs {' x '.join(ranges)}): both operands "
                     f"carry quantization error into the product (isolated SQNR {iso:.1f} dB)"),
            points=(p.name,),
            locations=ctx.locations(p),
            evidence={"input_min": [float(v) for v in s.input_min], "input_max": [float(v) for v in s.input_max],
                      "isolated_sqnr_db": iso},
            recommendation=Recommendation(
                "Products amplify relative error; if this point is degraded, keep it (or its inputs) at 16 bits.",
                config=keep_wide([p.name]),
            ),
        ))
    return findings


def normalization_inputs(ctx: Context) -> list[Finding]:
    findings = []
    by_range = {(ctx.stats(q).min, ctx.stats(q).max): q for q in ctx.points}
    for p in ctx.points:
        if not any(t in ("LayerNorm", "GroupNorm") for t in p.info.module_types):
            continue
        s = ctx.stats(p)
        if not len(s.input_min):
            continue
        producer = by_range.get((float(s.input_min[0]), float(s.input_max[0])))
        if producer is None or producer is p:
            continue
        z = ctx.z_max(producer)
        if z < NORM_INPUT_Z:
            continue
        findings.append(Finding(
            rule="normalization-input-range",
            severity=Severity.WARNING,
            message=(f"{p.name} normalises an input with outliers {z:.0f} standard deviations out "
                     f"(range [{s.input_min[0]:.3g}, {s.input_max[0]:.3g}], from {producer.name}): the quantized "
                     "input keeps few levels for the ordinary values"),
            points=(p.name, producer.name),
            locations=ctx.locations(p),
            related=ctx.locations(producer),
            evidence={"input_min": float(s.input_min[0]), "input_max": float(s.input_max[0]), "z_max": z,
                      "producer": producer.name, "producer_threshold": producer.activation.threshold},
            recommendation=Recommendation(
                f"Keep {producer.name} (the normalisation's input) at 16 bits, or remove the outlier channels "
                "upstream; the DeiT outlier study traces such channels to a few LayerNorm/MLP weights.",
                config=keep_wide([producer.name]),
            ),
        ))
    return findings
