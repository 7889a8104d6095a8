"""Which modules and functions are quantization points, in deployment terms.

Follows MCT's default target platform and torch.ao fusion: a conv/linear is fused with a
BatchNorm that directly consumes its output (folded) and with an activation that directly
follows; the fused group's output is the point. Functional ops that deployment quantizes
(concatenation, add/sub/mul of two activations, matmul, softmax, activation functions,
normalisation) are points of their own. Shape-only modules (dropout, flatten, max-pool)
pass quantized values through and are not points.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTED: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
)
BATCHNORM: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ACTIVATION_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.GELU: "gelu", nn.SiLU: "silu", nn.Hardswish: "hardswish",
    nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.SELU: "selu", nn.CELU: "celu", nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh", nn.Hardsigmoid: "hardsigmoid", nn.Mish: "mish", nn.PReLU: "prelu",
    nn.Softplus: "softplus", nn.Hardtanh: "hardtanh",
}
OTHER_POINT_MODULES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.Softmax,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.Embedding, nn.MultiheadAttention, nn.Upsample,
)
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Flatten,
    nn.Unflatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ReflectionPad2d,
)
INPUT_RANGE_MODULES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm)
"""Module points whose input range is recorded: the normalisation-input-range rule reads it.
Other points' inputs are earlier points' outputs, already measured there."""
INPUT_RANGE_OPS = {"cat", "mul", "matmul", "layer_norm"}
"""Functional points whose input ranges are recorded: each tensor of a concatenation (the
unbalanced-concat rule), both operands of a product (activation-product) and the input of a
functional layer norm (normalisation-input-range)."""
CHANNELS_FIRST: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    *BATCHNORM, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.AvgPool1d, nn.AdaptiveAvgPool1d,
)


def activation_name(module: nn.Module) -> str | None:
    return ACTIVATION_MODULES.get(type(module))


def is_point_module(module: nn.Module) -> bool:
    """A module whose own output is quantized (and whose inner ops are not looked at)."""
    if isinstance(module, PASS_THROUGH):
        return False
    if isinstance(module, (*WEIGHTED, *BATCHNORM, *OTHER_POINT_MODULES)) or type(module) in ACTIVATION_MODULES:
        return True
    has_children = next(module.children(), None) is not None
    has_params = next(module.parameters(recurse=False), None) is not None
    return not has_children and has_params


def weight_channel_axis(module: nn.Module) -> int:
    """Output-channel axis of the weight: 1 for transposed convolutions, else 0."""
    return 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0


def _collect(names: list[str], op: str, table: dict[Callable, str]) -> None:
    for owner in (torch, torch.Tensor, F, torch._C._nn):
        for name in names:
            fn = getattr(owner, name, None)
            if fn is not None:
                table[fn] = op


FUNCTION_OPS: dict[Callable, str] = {}
"""Function object -> op name, for every alias torch dispatches through __torch_function__."""
BINARY_OPS = {"add", "sub", "mul"}
ACTIVATION_OPS = {
    "relu", "relu6", "gelu", "silu", "hardswish", "leaky_relu", "elu", "selu", "celu", "sigmoid",
    "tanh", "hardsigmoid", "mish", "softplus", "hardtanh",
}
for _op, _names in {
    "cat": ["cat", "concat", "concatenate"],
    "add": ["add", "add_", "__add__", "__radd__", "__iadd__"],
    "sub": ["sub", "sub_", "__sub__", "__rsub__", "__isub__"],
    "mul": ["mul", "mul_", "__mul__", "__rmul__", "__imul__"],
    "matmul": ["matmul", "__matmul__", "bmm", "einsum"],
    "softmax": ["softmax"],
    "layer_norm": ["layer_norm"],
    "attention": ["scaled_dot_product_attention"],
    **{a: [a, f"{a}_"] for a in ACTIVATION_OPS},
}.items():
    _collect(_names, _op, FUNCTION_OPS)
