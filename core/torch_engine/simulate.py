"""Fake-quantized simulation: per-point error, isolated and cumulative, and model output.

Each batch runs twice:

* the float pass keeps every point's float output for this batch only, and measures the
  *isolated* error: the point's own quantized weights (BN folded) applied to its float
  input, then its output fake-quantized, against its float output;
* the quantized pass runs the model with every weight quantized, every folded BatchNorm
  an identity and every point's output fake-quantized, and measures the *cumulative* error
  at each point against the float output kept from the first pass.

Nothing is kept across batches but sums (:class:`ErrorSums`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantlens.core.activations import ActivationQuant
from quantlens.core.metrics import ErrorSums
from quantlens.core.stats import PointInfo
from quantlens.core.torch_engine.calibrate import Progress, as_batches, model_device, run_forward
from quantlens.core.torch_engine.instrument import Instrumentation, first_tensor, replace_first
from quantlens.core.torch_engine.loading import Batch, user_error

Metric = Callable[[torch.Tensor, torch.Tensor], float]
"""A user metric: (float tensor, quantized tensor) -> number, like XQuant's custom metrics."""


@dataclass
class QuantizedWeights:
    """The BN-folded, quantized parameters that replace a weight module's own."""

    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass
class SimulationResult:
    isolated: dict[str, ErrorSums]
    cumulative: dict[str, ErrorSums]
    output: ErrorSums
    top1_agreement: float | None
    custom: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per point (and "__output__"): metric name -> mean over batches."""
    float_eval: dict[str, float] = field(default_factory=dict)
    quant_eval: dict[str, float] = field(default_factory=dict)


def fake_quant(y: torch.Tensor, q: ActivationQuant) -> torch.Tensor:
    """MCT's uniform quantizer (see quantlens.core.quantizer), with the shift-negative offset."""
    levels = 2.0 ** (q.n_bits - 1) if q.signed else 2.0**q.n_bits
    step = q.threshold / levels
    low = -levels if q.signed else 0.0
    if q.shift:
        return torch.clamp(torch.round((y + q.shift) / step), low, levels - 1) * step - q.shift
    return torch.clamp(torch.round(y / step), low, levels - 1) * step


def _sums(x: torch.Tensor, q: torch.Tensor) -> ErrorSums:
    x = x.detach().double()
    q = q.detach().double()
    e = x - q
    return ErrorSums(float(x.numel()), float((x * x).sum()), float((q * q).sum()), float((x * q).sum()), float((e * e).sum()))


class _Plan:
    """Lookup tables shared by both passes."""

    def __init__(self, points: list[PointInfo], acts: dict[str, ActivationQuant],
                 weights: dict[str, QuantizedWeights], modules: dict[str, nn.Module]):
        self.points = {p.name: p for p in points}
        self.acts = acts
        self.weights = weights
        self.modules = modules
        self.output_module = {p.modules[-1]: p.name for p in points if p.modules and not p.output_function}
        self.output_function = {p.output_function: p.name for p in points if p.output_function}
        self.anchor = {p.modules[0]: p.name for p in points if p.weight_module}
        self.folded_bn = {p.folded_bn for p in points if p.folded_bn and p.name in weights}

    @property
    def watched(self) -> set[str]:
        return set(self.output_module) | set(self.anchor) | self.folded_bn

    def quantized(self, point: str) -> bool:
        return self.acts[point].quantize


class _FloatPass:
    def __init__(self, plan: _Plan, isolated: dict[str, ErrorSums]):
        self.plan = plan
        self.isolated = isolated
        self.outputs: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}

    def module_input(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        point = self.plan.anchor.get(name)
        if point is not None and args and isinstance(args[0], torch.Tensor):
            self.inputs[point] = args[0]

    def module_output(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        point = self.plan.output_module.get(name)
        if point is not None:
            self._record(point, first_tensor(output), module.forward)
        return None

    def function_output(self, key: str, op: str, func: Callable, args: tuple[Any, ...],
                        kwargs: dict[str, Any], output: Any) -> None:
        point = self.plan.output_function.get(key)
        if point is not None:
            rest = {k: v for k, v in kwargs.items() if k != "input"}
            self._record(point, first_tensor(output), lambda y: func(y, *args[1:], **rest))
        return None

    def _record(self, point: str, y: torch.Tensor | None, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if y is None or not y.is_floating_point():
            return
        self.outputs[point] = y.detach().clone()
        if not self.plan.quantized(point):
            return
        info = self.plan.points[point]
        y_iso = y
        if info.name in self.plan.weights and point in self.inputs:
            anchor = self.plan.modules[info.modules[0]]
            with swapped_parameters(anchor, self.plan.weights[info.name]):
                y_iso = anchor.forward(self.inputs[point])
            if info.activation is not None:
                y_iso = activation(y_iso)
        q = fake_quant(y_iso, self.plan.acts[point])
        self.isolated[point] = self.isolated.get(point, ErrorSums()) + _sums(y, q)


class _QuantPass:
    def __init__(self, plan: _Plan, floats: dict[str, torch.Tensor], cumulative: dict[str, ErrorSums],
                 metrics: dict[str, Metric], custom: dict[str, dict[str, list[float]]]):
        self.plan = plan
        self.floats = floats
        self.cumulative = cumulative
        self.metrics = metrics
        self.custom = custom

    def module_input(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        return None

    def module_output(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        folded = name in self.plan.folded_bn
        if folded:
            output = args[0]  # the BN is folded into the conv's quantized weights
        point = self.plan.output_module.get(name)
        quantized = None if point is None else self._quantize(point, output)
        return output if quantized is None and folded else quantized

    def function_output(self, key: str, op: str, func: Callable, args: tuple[Any, ...],
                        kwargs: dict[str, Any], output: Any) -> Any:
        point = self.plan.output_function.get(key)
        return None if point is None else self._quantize(point, output)

    def _quantize(self, point: str, output: Any) -> Any:
        y = first_tensor(output)
        if y is None or not y.is_floating_point():
            return None
        q = fake_quant(y, self.plan.acts[point]) if self.plan.quantized(point) else y
        ref = self.floats.get(point)
        if ref is not None and ref.shape == q.shape:
            self.cumulative[point] = self.cumulative.get(point, ErrorSums()) + _sums(ref, q)
            for metric_name, fn in self.metrics.items():
                self.custom.setdefault(point, {}).setdefault(metric_name, []).append(float(fn(ref, q)))
        return replace_first(output, q)


@contextmanager
def swapped_parameters(module: nn.Module, new: QuantizedWeights) -> Iterator[None]:
    """Temporarily give ``module`` other weight and bias tensors (restored on exit)."""
    saved = {k: module._parameters.get(k) for k in ("weight", "bias")}
    module._parameters["weight"] = nn.Parameter(new.weight, requires_grad=False)
    if new.bias is not None:
        module._parameters["bias"] = nn.Parameter(new.bias, requires_grad=False)
    try:
        yield
    finally:
        for k, v in saved.items():
            module._parameters[k] = v


@contextmanager
def quantized_weights(model: nn.Module, points: list[PointInfo], weights: dict[str, QuantizedWeights]) -> Iterator[None]:
    """Every weight module of ``points`` with its quantized parameters, for one pass."""
    modules = dict(model.named_modules())
    with ExitStack() as stack:
        for p in points:
            if p.name in weights and p.weight_module:
                stack.enter_context(swapped_parameters(modules[p.weight_module], weights[p.name]))
        yield


def simulate(
    model: nn.Module,
    points: list[PointInfo],
    acts: dict[str, ActivationQuant],
    weights: dict[str, QuantizedWeights],
    batches: Iterable[Batch],
    roots: list[Path],
    *,
    metrics: dict[str, Metric] | None = None,
    validation: Iterable[Batch] | None = None,
    evaluate: Callable[[torch.Tensor, Any], Any] | None = None,
    progress: Progress | None = None,
    total: int | None = None,
) -> SimulationResult:
    model.eval()
    metrics = metrics or {}
    plan = _Plan(points, acts, weights, dict(model.named_modules()))
    isolated: dict[str, ErrorSums] = {}
    cumulative: dict[str, ErrorSums] = {}
    custom_lists: dict[str, dict[str, list[float]]] = {}
    output_sums = ErrorSums()
    agree = seen = 0
    device = model_device(model)
    if progress:
        progress(0, total)  # the stage has begun: a hang in its first batch is reported as that batch
    with torch.no_grad():
        for i, batch in enumerate(as_batches(batches, device)):
            float_pass = _FloatPass(plan, isolated)
            with Instrumentation(model, float_pass, watched=plan.watched):
                out_f = first_tensor(run_forward(model, batch, roots))
            quant_pass = _QuantPass(plan, float_pass.outputs, cumulative, metrics, custom_lists)
            with quantized_weights(model, points, weights), Instrumentation(model, quant_pass, watched=plan.watched):
                out_q = first_tensor(run_forward(model, batch, roots))
            if out_f is not None and out_q is not None and out_f.is_floating_point():
                output_sums = output_sums + _sums(out_f, out_q)
                for metric_name, fn in metrics.items():
                    custom_lists.setdefault("__output__", {}).setdefault(metric_name, []).append(float(fn(out_f, out_q)))
                if out_f.ndim == 2 and out_f.shape[1] > 1:
                    agree += int((out_f.argmax(1) == out_q.argmax(1)).sum())
                    seen += out_f.shape[0]
            if progress:
                progress(i + 1, total)
        float_eval: dict[str, float] = {}
        quant_eval: dict[str, float] = {}
        if validation is not None:
            float_eval, quant_eval = _evaluate(model, plan, points, weights, validation, roots, evaluate, device)
    custom = {p: {m: sum(v) / len(v) for m, v in d.items()} for p, d in custom_lists.items()}
    return SimulationResult(
        isolated=isolated, cumulative=cumulative, output=output_sums,
        top1_agreement=agree / seen if seen else None, custom=custom, float_eval=float_eval, quant_eval=quant_eval,
    )


def _evaluate(model: nn.Module, plan: _Plan, points: list[PointInfo], weights: dict[str, QuantizedWeights],
              batches: Iterable[Batch], roots: list[Path], evaluate: Callable | None,
              device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """Accuracy and loss (or the user's evaluation) of the float and the quantized model."""
    totals_f: dict[str, float] = {}
    totals_q: dict[str, float] = {}
    count = 0
    for batch in as_batches(batches, device):
        out_f = first_tensor(run_forward(model, batch, roots))
        quant_pass = _QuantPass(plan, {}, {}, {}, {})
        with quantized_weights(model, points, weights), Instrumentation(model, quant_pass, watched=plan.watched):
            out_q = first_tensor(run_forward(model, batch, roots))
        n = batch.size
        for totals, out in ((totals_f, out_f), (totals_q, out_q)):
            try:
                scores = _scores(out, batch.labels, evaluate)
            except Exception as exc:  # noqa: BLE001 - user code
                raise user_error("the evaluation function raised", exc, roots, None) from None
            for k, v in scores.items():
                totals[k] = totals.get(k, 0.0) + v * n
        count += n
    return ({k: v / count for k, v in totals_f.items()}, {k: v / count for k, v in totals_q.items()}) if count else ({}, {})


def _scores(out: torch.Tensor | None, labels: Any, evaluate: Callable | None) -> dict[str, float]:
    if out is None:
        return {}
    if evaluate is not None:
        value = evaluate(out, labels)
        if isinstance(value, dict):
            return {str(k): float(v) for k, v in value.items()}
        return {"score": float(value)}
    if labels is None or out.ndim != 2 or not isinstance(labels, torch.Tensor):
        return {}
    labels = labels.to(out.device).long()
    return {
        "accuracy": float((out.argmax(1) == labels).float().mean()),
        "loss": float(torch.nn.functional.cross_entropy(out.float(), labels)),
    }
