"""BatchNorm folding and weight quantization of every weight point, as deployed."""

from __future__ import annotations

import torch
from torch import nn

from quantlens.core.settings import QuantSettings
from quantlens.core.stats import PointInfo
from quantlens.core.torch_engine import ops
from quantlens.core.torch_engine.simulate import QuantizedWeights
from quantlens.core.weights import WeightReport, quantize_weights


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


def quantize_model_weights(model: nn.Module, points: list[PointInfo],
                           settings: QuantSettings) -> tuple[dict[str, QuantizedWeights], dict[str, WeightReport]]:
    """Quantized (folded) parameters per point, and a report per weight module."""
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
        reports[p.name] = report
        if override.quantize:
            quantized[p.name] = QuantizedWeights(
                torch.from_numpy(wq).to(dtype=conv.weight.dtype, device=conv.weight.device),
                bias.to(conv.weight.dtype) if bias is not None else None,
            )
        elif bn is not None:
            # Not quantized but still deployed folded: keep the float folded parameters.
            quantized[p.name] = QuantizedWeights(weight, bias)
    return quantized, reports
