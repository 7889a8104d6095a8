"""BatchNorm folding and weight quantization of every weight point, as deployed."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from quantlens.core.settings import QuantSettings
from quantlens.core.stats import PointInfo, PointStats
from quantlens.core.torch_engine import ops
from quantlens.core.torch_engine.simulate import QuantizedWeights
from quantlens.core.weights import WeightReport, output_mean_shift, quantize_weights


def folded_parameters(conv: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W' = W * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta."""
    weight = conv.weight.detach()
    bias = conv.bias.detach() if getattr(conv, "bias", None) is not None else None
    if bn is None or bn.running_var is None or bn.running_mean is None:
        return weight, bias
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(scale)
    axis = ops.weight_channel_axis(conv)
    shape = [1] * weight.ndim
    shape[axis] = -1
    folded_w = weight * scale.reshape(shape)
    base = bias if bias is not None else torch.zeros_like(scale)
    folded_b = (base - bn.running_mean) * scale + shift
    return folded_w, folded_b


def quantize_model_weights(model: nn.Module, points: list[PointInfo], settings: QuantSettings,
                           stats: dict[str, PointStats] | None = None,
                           ) -> tuple[dict[str, QuantizedWeights], dict[str, WeightReport]]:
    """Quantized (folded) parameters per point, and a report per weight module.

    With calibration ``stats`` (input channel means) the output mean shift of each layer is
    measured, and removed from the bias when ``weights_bias_correction`` is on (MCT's
    bias correction).
    """
    modules = dict(model.named_modules())
    quantized: dict[str, QuantizedWeights] = {}
    reports: dict[str, WeightReport] = {}
    for p in points:
        if not p.weight_module:
            continue
        override = settings.for_point([p.name, *p.modules], p.module_types)
        conv = modules[p.weight_module]
        bn = modules.get(p.folded_bn) if p.folded_bn else None
        weight, bias = folded_parameters(conv, bn)
        n_bits = override.weights_n_bits or settings.weights_n_bits
        wq, report = quantize_weights(
            p.weight_module, weight.float().cpu().numpy(), ops.weight_channel_axis(conv), n_bits,
            settings.weights_error_method, per_channel=settings.weights_per_channel_threshold,
            l_p_value=settings.l_p_value, power_of_two=settings.power_of_two_thresholds, folded_bn=p.folded_bn,
        )
        shift = _mean_shift(conv, weight, wq, stats.get(p.name) if stats else None)
        correct = shift is not None and settings.weights_bias_correction and override.quantize
        report = dataclasses.replace(report, bias_shift=shift, bias_corrected=correct)
        reports[p.name] = report
        if override.quantize:
            if correct:
                base = bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
                bias = base - torch.from_numpy(shift).to(dtype=base.dtype, device=base.device)
            quantized[p.name] = QuantizedWeights(
                torch.from_numpy(wq).to(dtype=conv.weight.dtype, device=conv.weight.device),
                bias.to(conv.weight.dtype) if bias is not None else None,
            )
        elif bn is not None:
            # Not quantized but still deployed folded: keep the float folded parameters.
            quantized[p.name] = QuantizedWeights(weight, bias)
    return quantized, reports


def _mean_shift(module: nn.Module, weight: torch.Tensor, quantized: np.ndarray,
                stats: PointStats | None) -> np.ndarray | None:
    if stats is None or stats.input_channel_mean is None or ops.weight_channel_axis(module) != 0:
        return None
    groups = int(getattr(module, "groups", 1))
    mean = stats.input_channel_mean
    if mean.shape[0] != weight.shape[1] * groups:
        return None
    return output_mean_shift(weight.float().cpu().numpy(), quantized, mean, groups)
