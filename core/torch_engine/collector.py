"""Streaming statistics on the model's device, a fixed amount of memory per point.

Per batch and point the work is: one integer shift for the float-bits bin of every value,
a scatter of counts and sums into the bins, one sum of squares, and per-channel min/max.
Accumulators stay on the device; nothing is copied to the host until :meth:`Collector.finish`. Even batches go to half 0 and odd batches to half 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from quantlens.core import histogram
from quantlens.core.stats import PointInfo, PointStats
from quantlens.core.torch_engine.instrument import first_tensor, tensor_inputs


_ONE = torch.ones((), dtype=torch.float64)


def _add_to_bins(counts: torch.Tensor, sums: torch.Tensor, idx: torch.Tensor, wide: torch.Tensor) -> None:
    """Add every value's count and value (``wide``: the values in float64) to its bin.

    ``index_add_`` costs per value only; ``bincount`` also pays for all 2^17 bins but
    runs faster per value, so it wins once a tensor has more values than bins. On small
    layers a full-size ``bincount`` per call cost more than the layer itself (BENCHMARKS.md).
    """
    if idx.numel() > histogram.NUM_BINS:
        counts += torch.bincount(idx, minlength=histogram.NUM_BINS)
        sums += torch.bincount(idx, weights=wide, minlength=histogram.NUM_BINS)
    else:
        counts.index_add_(0, idx, _ONE.to(counts.device).expand(idx.shape))
        sums.index_add_(0, idx, wide)


class _Accumulator:
    def __init__(self, point: PointInfo, device: torch.device):
        self.point = point
        self.counts = torch.zeros(2, histogram.NUM_BINS, dtype=torch.float64, device=device)
        self.sums = torch.zeros(2, histogram.NUM_BINS, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(2, dtype=torch.float64, device=device)
        self.channel_min: torch.Tensor | None = None
        self.channel_max: torch.Tensor | None = None
        self.input_min: list[torch.Tensor] = []
        self.input_max: list[torch.Tensor] = []
        self.input_channel_sum: torch.Tensor | None = None
        self.input_channel_count = 0
        self.count = 0
        self.batches = 0

    def observe(self, y: torch.Tensor, half: int) -> None:
        y = y.detach()
        if y.dtype != torch.float32:
            y = y.float()
        y = y.contiguous()
        flat = y.view(-1)
        idx = flat.view(torch.int32) >> histogram.SHIFT
        idx += histogram.OFFSET
        wide = flat.double()
        _add_to_bins(self.counts[half], self.sums[half], idx, wide)
        self.sumsq[half] += torch.dot(wide, wide)
        axis = self.point.channel_axis if y.ndim > 1 else 0
        if y.ndim == 0:
            cmin, cmax = y.reshape(1), y.reshape(1)
        else:
            other = tuple(d for d in range(y.ndim) if d != axis % y.ndim)
            cmin, cmax = (y.amin(dim=other), y.amax(dim=other)) if other else (y, y)
        if self.channel_min is None or self.channel_min.shape != cmin.shape:
            self.channel_min, self.channel_max = cmin.clone(), cmax.clone()
        else:
            torch.minimum(self.channel_min, cmin, out=self.channel_min)
            torch.maximum(self.channel_max, cmax, out=self.channel_max)
        self.count += flat.numel()
        self.batches += 1

    def observe_inputs(self, inputs: list[torch.Tensor]) -> None:
        for i, t in enumerate(inputs):
            if not t.is_floating_point() or t.numel() == 0:
                continue
            lo, hi = torch.aminmax(t.detach().float())
            if i >= len(self.input_min):
                self.input_min.append(lo.clone())
                self.input_max.append(hi.clone())
            else:
                torch.minimum(self.input_min[i], lo, out=self.input_min[i])
                torch.maximum(self.input_max[i], hi, out=self.input_max[i])

    def observe_channel_mean(self, x: torch.Tensor, axis: int) -> None:
        x = x.detach().float()
        other = tuple(d for d in range(x.ndim) if d != axis % x.ndim)
        # float32 partial sums (one batch) then float64 across batches: a float64 reduction
        # would first copy the whole input to float64
        total = x.sum(dim=other).double() if other else x.double()
        if self.input_channel_sum is None or self.input_channel_sum.shape != total.shape:
            self.input_channel_sum = total.clone()
            self.input_channel_count = x.numel() // max(total.numel(), 1)
        else:
            self.input_channel_sum += total
            self.input_channel_count += x.numel() // max(total.numel(), 1)

    def finish(self) -> PointStats:
        counts = self.counts.cpu().numpy()
        sums = self.sums.cpu().numpy()
        used = np.flatnonzero(counts.sum(axis=0) > 0)
        bins = used.astype(np.int32)
        nonfinite_mask = histogram.is_nonfinite(bins)
        nonfinite = int(counts[:, used][:, nonfinite_mask].sum())
        keep = used[~nonfinite_mask]
        sumsq = self.sumsq.cpu().numpy()
        cmin = self.channel_min.cpu().numpy().astype(np.float64) if self.channel_min is not None else np.zeros(0)
        cmax = self.channel_max.cpu().numpy().astype(np.float64) if self.channel_max is not None else np.zeros(0)
        lo, _ = histogram.bin_bounds(keep)
        if nonfinite:
            # NaN/Inf poison sums and min/max; fall back to the finite bins' extent.
            sumsq = np.array([float(np.sum((sums[h, keep] ** 2) / np.maximum(counts[h, keep], 1))) for h in (0, 1)])
            means = sums[:, keep].sum(0) / np.maximum(counts[:, keep].sum(0), 1)
            order = np.argsort(lo)
            bottom = float(means[order[0]]) if len(lo) else 0.0  # mean of the lowest finite bin
            top = float(means[order[-1]]) if len(lo) else 0.0
            cmin = np.where(np.isfinite(cmin), cmin, bottom)
            cmax = np.where(np.isfinite(cmax), cmax, top)
        finite_count = counts[:, keep].sum()
        return PointStats(
            count=int(finite_count),
            sumsq=float(sumsq.sum()),
            min=float(cmin.min()) if len(cmin) else 0.0,
            max=float(cmax.max()) if len(cmax) else 0.0,
            bins=keep.astype(np.int32),
            counts=counts[:, keep],
            sums=sums[:, keep],
            sumsq_halves=sumsq.astype(np.float64),
            channel_min=cmin,
            channel_max=cmax,
            input_min=np.array([float(t) for t in self.input_min]),
            input_max=np.array([float(t) for t in self.input_max]),
            input_channel_mean=(self.input_channel_sum / max(self.input_channel_count, 1)).cpu().numpy()
            if self.input_channel_sum is not None else None,
            nonfinite=nonfinite,
            batches=self.batches,
        )


class Collector:
    """Instrumentation handler that feeds every point's accumulator."""

    def __init__(self, points: list[PointInfo], model: nn.Module, device: torch.device):
        self.acc = {p.name: _Accumulator(p, device) for p in points}
        self.output_module = {p.modules[-1]: p.name for p in points if p.modules and not p.output_function}
        self.output_function = {p.output_function: p.name for p in points if p.output_function}
        self.input_module = {p.modules[0]: p.name for p in points if p.modules}
        self.weighted = {p.name: p for p in points if p.weight_module}
        self.half = 0

    @property
    def watched(self) -> set[str]:
        return set(self.output_module) | set(self.input_module)

    def module_input(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        point = self.input_module.get(name)
        if point is None or not args or not isinstance(args[0], torch.Tensor):
            return
        acc = self.acc[point]
        acc.observe_inputs([args[0]])
        if point in self.weighted:
            x = args[0]
            axis = 1 if (x.ndim >= 3 and not isinstance(module, nn.Linear)) else x.ndim - 1
            acc.observe_channel_mean(x, axis)

    def module_output(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        point = self.output_module.get(name)
        if point is not None:
            y = first_tensor(output)
            if y is not None and y.is_floating_point():
                self.acc[point].observe(y, self.half)
        return None

    def function_output(self, key: str, op: str, func: Callable, args: tuple[Any, ...],
                        kwargs: dict[str, Any], output: Any) -> None:
        point = self.output_function.get(key)
        if point is None:
            return None
        acc = self.acc[point]
        y = first_tensor(output)
        if y is not None and y.is_floating_point():
            acc.observe(y, self.half)
        if point == key:
            acc.observe_inputs(tensor_inputs(op, args, kwargs))
        return None

    def finish(self) -> dict[str, PointStats]:
        return {name: acc.finish() for name, acc in self.acc.items()}
