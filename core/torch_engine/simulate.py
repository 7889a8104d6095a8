"""Fake-quantized simulation: per-point error, isolated and cumulative, and model output.

Each batch has two passes:

* the float pass keeps every point's float output for this batch only, and measures the
  *isolated* error: the point's own quantized weights (BN folded) applied to its float
  input, then its output fake-quantized, against its float output. When calibration
  recorded this batch's forward (the simulated batches are its first ones), the pass is
  that recording replayed, not a forward;
* the quantized pass runs the model with every weight quantized, every folded BatchNorm
  an identity and every point's output fake-quantized, and measures the *cumulative* error
  at each point against the float output kept from the first pass.

Nothing per point is kept across batches but sums (:class:`ErrorSums`); for the
re-simulations (:func:`resimulate`) the float model outputs and the quantized passes'
module calls (:mod:`quantlens.core.torch_engine.tape`) are kept, within budgets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from quantlens.core.activations import ActivationQuant
from quantlens.core.errors import QuantlensError
from quantlens.core.metrics import ErrorSums
from quantlens.core.stats import PointInfo
from quantlens.core.torch_engine.calibrate import Progress, as_batches, model_device, run_forward
from quantlens.core.torch_engine.instrument import Instrumentation, first_tensor, replace_first
from quantlens.core.torch_engine.kept import Recording
from quantlens.core.torch_engine.loading import Batch, user_error
from quantlens.core.torch_engine.tape import TAPE_BYTES, Tape, replaced_forward, reused
from torch import nn

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
    output: VariantOutput
    """The model output, float against quantized."""
    custom: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per point: metric name -> mean over batches."""
    float_eval: dict[str, float] = field(default_factory=dict)
    quant_eval: dict[str, float] = field(default_factory=dict)
    outputs: list[torch.Tensor] | None = None
    """The float model outputs per batch (``keep_outputs``), None when not kept."""
    tapes: list[Tape] = field(default_factory=list)
    """The quantized pass's module calls per batch (``keep_outputs``), for the re-simulations."""


def fake_quant(y: torch.Tensor, q: ActivationQuant) -> torch.Tensor:
    """MCT's uniform quantizer (see quantlens.core.quantizer), with the shift-negative offset.

    One new tensor, the rest in place: on large activations the simulation is bound by
    memory traffic, and every temporary is another pass over it."""
    levels = 2.0 ** (q.n_bits - 1) if q.signed else 2.0**q.n_bits
    step = q.threshold / levels
    low = -levels if q.signed else 0.0
    if q.shift:
        out = torch.add(y, q.shift).div_(step).round_().clamp_(low, levels - 1).mul_(step)
        return out.sub_(q.shift)
    return torch.div(y, step).round_().clamp_(low, levels - 1).mul_(step)


def _energy(x: torch.Tensor) -> float:
    """sum(x * x), in the tensor's own precision (float32 unless double)."""
    flat = x.detach().reshape(-1).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    return float(torch.dot(flat, flat))


def _sums(x: torch.Tensor, q: torch.Tensor, sum_xx: float | None = None) -> ErrorSums:
    """The error sums of one tensor pair from three dot products in the tensors' own precision
    (float32 unless double), the energy of ``x`` passed in when known (the float output is
    compared twice: isolated and cumulative). The error is formed before squaring, so it
    suffers no cancellation; x.q follows from |x|^2 + |q|^2 - |x - q|^2 = 2 x.q, whose
    rounding (1e-7 of |x|^2) is far below anything a cosine shows. On the large activations
    of audio_cnn the dot products were a quarter of the simulation (BENCHMARKS.md)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.detach().reshape(-1).to(dtype)
    qf = q.detach().reshape(-1).to(dtype)
    e = xf - qf
    xx = float(torch.dot(xf, xf)) if sum_xx is None else sum_xx
    qq = float(torch.dot(qf, qf))
    ee = float(torch.dot(e, e))
    return ErrorSums(float(xf.numel()), xx, qq, 0.5 * (xx + qq - ee), ee)


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
        self.input_point = next((p.name for p in points if p.kind == "input"), None)
        """The model input's point (MCT quantizes the input), None when the model has none."""

    @property
    def watched(self) -> set[str]:
        return set(self.output_module) | set(self.anchor) | self.folded_bn

    def quantized(self, point: str) -> bool:
        return self.acts[point].quantize


class _FloatPass:
    """The float side of a batch, under a forward's hooks or replayed from calibration's
    recording of them (``copy`` False: the recorded tensors are kept and proven unchanged)."""

    def __init__(self, plan: _Plan, isolated: dict[str, ErrorSums], copy: bool = True):
        self.plan = plan
        self.isolated = isolated
        self.copy = copy
        self.outputs: dict[str, torch.Tensor] = {}
        self.energy: dict[str, float] = {}
        """sum(x * x) of each point's float output, for both comparisons with it."""
        self.inputs: dict[str, torch.Tensor] = {}
        self.output: torch.Tensor | None = None
        """The model's float output for the batch."""

    def reads(self, kind: str, name: str) -> bool:
        """Whether the hook call ``kind`` for the module or functional op ``name`` is read."""
        if kind == "module_input":
            return name in self.plan.anchor
        if kind == "module_output":
            return name in self.plan.output_module
        return name in self.plan.output_function

    def model_input(self, x: torch.Tensor | None) -> None:
        """The model input is a point: its float value and its isolated error (its own)."""
        point = self.plan.input_point
        if point is not None and x is not None and x.is_floating_point():
            self._record(point, x, lambda y: y)

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
        self.outputs[point] = y.detach().clone() if self.copy else y.detach()
        self.energy[point] = _energy(y)
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
        self.isolated[point] = self.isolated.get(point, ErrorSums()) + _sums(y, q, self.energy[point])


class _QuantPass:
    def __init__(self, plan: _Plan, floats: dict[str, torch.Tensor], cumulative: dict[str, ErrorSums],
                 metrics: dict[str, Metric], custom: dict[str, dict[str, list[float]]],
                 energy: dict[str, float] | None = None):
        self.plan = plan
        self.floats = floats
        self.energy = energy or {}
        self.cumulative = cumulative
        self.metrics = metrics
        self.custom = custom

    def model_input(self, batch: Batch) -> Batch:
        """``batch`` with the model input fake-quantized (when the input is a point)."""
        point = self.plan.input_point
        x = batch.input
        if point is None or x is None or not x.is_floating_point():
            return batch
        q = self._quantize(point, x)
        return batch if q is None else with_first_input(batch, q)

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
            self.cumulative[point] = self.cumulative.get(point, ErrorSums()) + _sums(ref, q, self.energy.get(point))
            for metric_name, fn in self.metrics.items():
                self.custom.setdefault(point, {}).setdefault(metric_name, []).append(float(fn(ref, q)))
        return replace_first(output, q)


def with_first_input(batch: Batch, x: torch.Tensor) -> Batch:
    """``batch`` with its first tensor argument replaced by ``x``."""
    args = list(batch.args)
    for i, value in enumerate(args):
        if isinstance(value, torch.Tensor):
            args[i] = x
            return dataclasses.replace(batch, args=tuple(args))
    kwargs = dict(batch.kwargs)
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            kwargs[key] = x
            break
    return dataclasses.replace(batch, kwargs=kwargs)


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
    """Every weight module of ``points`` with its quantized parameters, and every BatchNorm
    folded into them an identity, for one pass (the BN's hooks still run; computing the BN
    only to drop its output cost a sixth of audio_cnn's quantized pass)."""
    modules = dict(model.named_modules())
    with ExitStack() as stack:
        for p in points:
            if p.name in weights and p.weight_module:
                stack.enter_context(swapped_parameters(modules[p.weight_module], weights[p.name]))
                if p.folded_bn:
                    stack.enter_context(replaced_forward(modules[p.folded_bn], _pass_through))
        yield


def _pass_through(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return x


KEEP_OUTPUTS_BYTES = 64 << 20
"""The float model outputs of a simulation are kept for the re-simulations that follow (so
they need no float pass of their own) while they take at most this much memory."""


@dataclass
class Variant:
    """One way of quantizing the model: the thresholds of every point and the quantized weights."""

    acts: dict[str, ActivationQuant]
    weights: dict[str, QuantizedWeights]


@dataclass
class VariantOutput:
    """A variant's model output against the float model's, kept as per-batch parts so that
    the output measured on the first batches and the one measured on the rest join into the
    output on all of them (``first + rest``), as if measured in one run."""

    batches: list[ErrorSums] = field(default_factory=list)
    """The error sums of each batch."""
    agreeing: int = 0
    """Samples whose float and quantized top-1 classes agree (outputs with a class axis)."""
    classified: int = 0
    custom_by_batch: dict[str, list[float]] = field(default_factory=dict)
    """The user's metrics, one value per batch."""

    @property
    def error(self) -> ErrorSums:
        return sum(self.batches, ErrorSums())

    @property
    def top1_agreement(self) -> float | None:
        return self.agreeing / self.classified if self.classified else None

    @property
    def custom(self) -> dict[str, float]:
        return {name: sum(values) / len(values) for name, values in self.custom_by_batch.items()}

    def __add__(self, rest: VariantOutput) -> VariantOutput:
        names = dict.fromkeys([*self.custom_by_batch, *rest.custom_by_batch])
        return VariantOutput([*self.batches, *rest.batches], self.agreeing + rest.agreeing,
                             self.classified + rest.classified,
                             {n: [*self.custom_by_batch.get(n, []), *rest.custom_by_batch.get(n, [])] for n in names})


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
    keep_outputs: bool = False,
    recordings: list[Recording | None] | None = None,
) -> SimulationResult:
    """Every point's isolated and cumulative error and the model output's, under one variant.

    With ``keep_outputs`` the float model outputs are returned (``SimulationResult.outputs``)
    while they fit in KEEP_OUTPUTS_BYTES, for :func:`resimulate` to compare against.
    ``recordings`` holds calibration's recorded forwards of these very batches, in order (None
    where not kept): a batch's float pass is replayed from its recording, not run again."""
    model.eval()
    metrics = metrics or {}
    plan = _Plan(points, acts, weights, dict(model.named_modules()))
    isolated: dict[str, ErrorSums] = {}
    cumulative: dict[str, ErrorSums] = {}
    custom_lists: dict[str, dict[str, list[float]]] = {}
    output = _OutputAccumulator(metrics)
    kept: list[torch.Tensor] | None = [] if keep_outputs else None
    kept_bytes = 0
    tapes: list[Tape] = []
    device = model_device(model)
    if progress:
        progress(0, total)  # the stage has begun: a hang in its first batch is reported as that batch
    with torch.no_grad():
        for i, batch in enumerate(as_batches(batches, device)):
            recording = recordings[i] if recordings is not None and i < len(recordings) else None
            floats = _float_pass(model, plan, batch, roots, isolated, recording)
            tape = Tape(TAPE_BYTES - sum(t.bytes for t in tapes)) if keep_outputs else None
            out_q = _quantized_forward(model, plan, batch, roots, floats.outputs, cumulative, metrics, custom_lists,
                                       floats.energy, tape)
            if tape is not None:
                tapes.append(tape)
            out_f = floats.output
            output.add(out_f, out_q)
            if kept is not None and out_f is not None:
                kept_bytes += out_f.numel() * out_f.element_size()
                kept = kept + [out_f] if kept_bytes <= KEEP_OUTPUTS_BYTES else None
            if progress:
                progress(i + 1, total)
        float_eval: dict[str, float] = {}
        quant_eval: dict[str, float] = {}
        if validation is not None:
            float_eval, quant_eval = _evaluate(model, plan, points, weights, validation, roots, evaluate, device)
    custom = {p: {m: sum(v) / len(v) for m, v in d.items()} for p, d in custom_lists.items()}
    return SimulationResult(
        isolated=isolated, cumulative=cumulative, output=output.out, custom=custom,
        float_eval=float_eval, quant_eval=quant_eval, outputs=kept, tapes=tapes,
    )


def _float_pass(model: nn.Module, plan: _Plan, batch: Batch, roots: list[Path], isolated: dict[str, ErrorSums],
                recording: Recording | None) -> _FloatPass:
    """The float side of one batch (its ``output`` set): replayed from ``recording`` when it
    holds this batch unchanged, else a forward under the float pass's hooks."""
    if recording is not None:
        replayed = _FloatPass(plan, isolated, copy=False)
        if recording.replay(replayed, replayed.reads):
            replayed.output = recording.output
            return replayed
    float_pass = _FloatPass(plan, isolated)
    float_pass.model_input(batch.input)
    with Instrumentation(model, float_pass, watched=plan.watched):
        float_pass.output = first_tensor(run_forward(model, batch, roots))
    return float_pass


def resimulate(
    model: nn.Module,
    points: list[PointInfo],
    variants: list[Variant],
    batches: Iterable[Batch],
    roots: list[Path],
    *,
    reference: list[torch.Tensor] | None = None,
    base: tuple[Variant, list[Tape]] | None = None,
    metrics: dict[str, Metric] | None = None,
    progress: Progress | None = None,
    total: int | None = None,
) -> list[VariantOutput]:
    """The model output of several variants at once: the one re-simulation entry point of
    verification and sensitivity.

    The variants share each batch and its float output (``reference``, the float outputs a
    :func:`simulate` kept, in batch order; a plain float forward when None), so K variants
    cost K quantized passes and nothing per point is accumulated. ``base`` is the simulated
    variant with its tapes (:mod:`quantlens.core.torch_engine.tape`): each variant reuses the
    module calls of the simulation's quantized pass that end before its first changed point.
    When the base itself runs, as the first of ``variants`` (on batches the simulation did
    not run, which have no tape), its pass records the batch's tape for the others.
    """
    model.eval()
    metrics = metrics or {}
    modules = dict(model.named_modules())
    plans = [_Plan(points, v.acts, v.weights, modules) for v in variants]
    changed = [_changed(points, base[0], v) if base is not None else [] for v in variants]
    tapes = base[1] if base is not None else []
    records = base is not None and bool(variants) and variants[0] is base[0]
    outputs = [_OutputAccumulator(metrics) for _ in variants]
    device = model_device(model)
    steps = 0
    if progress:
        progress(0, total)
    with torch.no_grad():
        for i, batch in enumerate(as_batches(batches, device)):
            if reference is not None and i < len(reference):
                out_f = reference[i]
            else:
                out_f = first_tensor(run_forward(model, batch, roots))
            tape = tapes[i] if i < len(tapes) else None
            for k, (plan, output, points_changed) in enumerate(zip(plans, outputs, changed)):
                reuse = tape.reusable(tape.cut(points_changed)) if tape is not None else []
                recording = Tape(TAPE_BYTES) if records and k == 0 and tape is None else None
                try:
                    out_q = _quantized_forward(model, plan, batch, roots, {}, {}, {}, {}, tape=recording, reuse=reuse)
                except QuantlensError:
                    if not reuse:
                        raise  # the user's own error, as a forward without reuse meets it
                    # A forward that needs what a skipped module's forward leaves behind (a
                    # list of features it appends to): the tapes go, and this pass runs whole.
                    tapes, tape, records = [], None, False
                    out_q = _quantized_forward(model, plan, batch, roots, {}, {}, {}, {})
                if recording is not None:
                    tape = recording
                output.add(out_f, out_q)
                steps += 1
                if progress:
                    progress(steps, total)
    return [o.out for o in outputs]


def _changed(points: list[PointInfo], base: Variant, variant: Variant) -> list[PointInfo]:
    """The points ``variant`` quantizes otherwise than ``base``: another activation quantizer,
    or weights quantized again (a variant shares the base's unchanged weights)."""
    return [p for p in points if _quantizer(variant.acts.get(p.name)) != _quantizer(base.acts.get(p.name))
            or variant.weights.get(p.name) is not base.weights.get(p.name)]


def _quantizer(q: ActivationQuant | None) -> tuple[Any, ...] | None:
    """What :func:`fake_quant` reads of ``q``."""
    return None if q is None else (q.quantize, q.threshold, q.signed, q.n_bits, q.shift)


class _OutputAccumulator:
    """The model output's error, top-1 agreement and the user's metrics, batch by batch."""

    def __init__(self, metrics: dict[str, Metric]):
        self.metrics = metrics
        self.out = VariantOutput()

    def add(self, out_f: torch.Tensor | None, out_q: torch.Tensor | None) -> None:
        if out_f is None or out_q is None or not out_f.is_floating_point() or out_f.shape != out_q.shape:
            return
        self.out.batches.append(_sums(out_f, out_q))
        for name, fn in self.metrics.items():
            self.out.custom_by_batch.setdefault(name, []).append(float(fn(out_f, out_q)))
        if out_f.ndim == 2 and out_f.shape[1] > 1:
            self.out.agreeing += int((out_f.argmax(1) == out_q.argmax(1)).sum())
            self.out.classified += out_f.shape[0]


def _quantized_forward(model: nn.Module, plan: _Plan, batch: Batch, roots: list[Path],
                       floats: dict[str, torch.Tensor], cumulative: dict[str, ErrorSums],
                       metrics: dict[str, Metric], custom: dict[str, dict[str, list[float]]],
                       energy: dict[str, float] | None = None, tape: Tape | None = None,
                       reuse: list[Any] | None = None) -> torch.Tensor | None:
    """One quantized forward of ``batch``: quantized weights, folded BatchNorms, every point's
    output fake-quantized; cumulative errors against ``floats`` (with their ``energy``) where
    given; its module calls written to ``tape``, or the calls ``reuse`` returning their kept outputs."""
    quant_pass = _QuantPass(plan, floats, cumulative, metrics, custom, energy)
    batch = quant_pass.model_input(batch)
    with quantized_weights(model, list(plan.points.values()), plan.weights), reused(model, reuse or []), \
            Instrumentation(model, quant_pass, watched=plan.watched, tape=tape):
        return first_tensor(run_forward(model, batch, roots))


def _evaluate(model: nn.Module, plan: _Plan, points: list[PointInfo], weights: dict[str, QuantizedWeights],
              batches: Iterable[Batch], roots: list[Path], evaluate: Callable | None,
              device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """Accuracy and loss (or the user's evaluation) of the float and the quantized model."""
    totals_f: dict[str, float] = {}
    totals_q: dict[str, float] = {}
    count = 0
    for batch in as_batches(batches, device):
        out_f = first_tensor(run_forward(model, batch, roots))
        out_q = _quantized_forward(model, plan, batch, roots, {}, {}, {}, {})
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
