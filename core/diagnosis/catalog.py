"""The rule catalogue: stable ids, titles and what each rule looks for.

Ids never change once published: suppressions (``# quantlens: ignore[rule]``), baselines
and SARIF results refer to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantlens.core.findings import Severity


@dataclass(frozen=True)
class RuleInfo:
    id: str
    title: str
    description: str
    default_severity: Severity


RULES: dict[str, RuleInfo] = {r.id: r for r in [
    RuleInfo("degraded-layer", "Degraded layer",
             "A point whose quantization error passes threshold_quantize_error (normalised MSE, cosine and SQNR); "
             "information where the error is inherited from upstream or another warning names its cause.",
             Severity.WARNING),
    RuleInfo("outliers-zscore", "Activation outliers (z-score)",
             "Values beyond threshold_zscore_outlier_removal standard deviations stretch the quantization range.",
             Severity.WARNING),
    RuleInfo("outliers-iqr", "Activation outliers (IQR)",
             "More than 5% of the values lie outside 1.5*IQR of the quartiles (the DeiT outlier study's cut).",
             Severity.INFO),
    RuleInfo("shift-negative", "Shift negative activation",
             "An activation with a small negative part (GELU, SiLU, Hardswish, ...) wastes half of a signed range.",
             Severity.INFO),
    RuleInfo("unbalanced-concat", "Unbalanced concatenation",
             "Inputs of a concatenation whose ranges differ by more than threshold_ratio_unbalanced_concatenation.",
             Severity.WARNING),
    RuleInfo("mixed-precision-last-layer", "Low bit width on the last layer",
             "The last layer is quantized at or below threshold_bitwidth_mixed_precision_with_model_output_loss_objective bits.",
             Severity.WARNING),
    RuleInfo("dataset-size", "Representative dataset too small or not diverse",
             "Thresholds differ between two disjoint halves of the calibration data, or there are too few samples.",
             Severity.WARNING),
    RuleInfo("batch-shape", "Batches of another shape",
             "A calibration batch's input shape differs from the first batch's (beyond the batch dimension), or "
             "the model output's batch size differs from its input's: samples folded or split silently.",
             Severity.WARNING),
    RuleInfo("dataset-mismatch", "Representative dataset mismatch",
             "Per-layer distributions differ between calibration and validation data.",
             Severity.WARNING),
    RuleInfo("weight-precision", "Weights lose precision",
             "A layer's quantized weights fall under the SQNR its bit width should give (per-tensor thresholds "
             "over channels of very different ranges, folded BatchNorm with a collapsed variance).",
             Severity.WARNING),
    RuleInfo("bias-correction", "Bias shift from weight quantization",
             "Weight quantization shifts the mean of output channels; bias correction would remove it.",
             Severity.INFO),
    RuleInfo("best-fix", "Best measured fix",
             "The re-simulated change that raises the output SQNR most, usually upstream of where the error shows.",
             Severity.WARNING),
    RuleInfo("sensitive-layers", "Most sensitive layers",
             "The points with the largest isolated error, and the output gain of keeping them at 16 bits.",
             Severity.INFO),
    RuleInfo("first-divergence", "Where the damage starts",
             "The earliest point where the cumulative error jumps while earlier points are fine.",
             Severity.INFO),
    RuleInfo("calibrator-comparison", "Threshold method beaten or degenerate",
             "The configured error method is clearly beaten by another, or a method lands on min/max everywhere.",
             Severity.INFO),
    RuleInfo("setting-damage", "A setting does the damage",
             "A configured z_threshold or activation_error_method cuts a point's threshold and costs it more than "
             "one bit of predicted SQNR (half a bit inside a bounded output's natural range: softmax, sigmoid, tanh).",
             Severity.WARNING),
    RuleInfo("activation-product", "Product of two activations",
             "Attention scores, gates and squeeze-excitation products multiply two quantized tensors.",
             Severity.INFO),
    RuleInfo("normalization-input-range", "Normalisation fed a huge range",
             "A LayerNorm/GroupNorm whose input range is dominated by outliers.",
             Severity.WARNING),
    RuleInfo("output-degraded", "Model output degraded, no layer stands out",
             "The output degrades though no single layer passes the thresholds.",
             Severity.WARNING),
    RuleInfo("global-degradation", "Most layers degraded",
             "More than threshold_degrade_layer_ratio of the layers are degraded: a global problem.",
             Severity.ERROR),
    RuleInfo("degraded-unexplained", "Degraded, cause unknown",
             "A degraded layer that no other rule explains.",
             Severity.WARNING),
    RuleInfo("nonfinite", "NaN or Inf in activations",
             "A point produced NaN or Inf during calibration.",
             Severity.ERROR),
    RuleInfo("baseline-regression", "Regression against the baseline",
             "A point's isolated or cumulative SQNR, or the output SQNR, fell more than the tolerance below --baseline.",
             Severity.ERROR),
]}
