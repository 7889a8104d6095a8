"""Streaming statistics on the model's device, a fixed amount of memory per point.

Per batch and point the work is: the values' bit patterns as int64, their bin codes (one
shift), one int64 scatter of pattern + 2^38 that counts and exactly sums every bin at once
(:data:`histogram.PACK_SHIFT`), one sum of squares, and per-channel min/max. A packed
scatter replaced a ``bincount`` of counts plus a float64 ``bincount`` of sums: half the
scatters, no float64 copy of the activations and no per-call pass over all 2^17 bins, so
small tensors cost per value only (BENCHMARKS.md). A large point scatters into two rows of
cells at once, which torch runs on two threads (:data:`PARALLEL_MIN`); the rows are summed
when unpacked. Accumulators are allocated at a point's first tensor and stay on the device; they go
to the host at :meth:`Collector.finish` (and, unpacked, every 2^23 values of a point).
Even batches go to half 0, odd batches to half 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from quantlens.core import histogram
from quantlens.core.stats import PointInfo, PointStats
from quantlens.core.torch_engine import ops
from quantlens.core.torch_engine.instrument import first_tensor, tensor_inputs

CHUNK = 1 << 20
"""Values scattered per call: bounds the scratch buffers (20 MiB) whatever the tensor size."""
PARALLEL_MIN = 1 << 17
"""A point whose first tensor has at least this many values scatters into two rows of cells
at once: torch runs a scatter along rows in parallel (one row per thread), while a 1-D
scatter runs on one thread; on 2^20 values the two-row scatter takes half the time."""
PARALLEL_BYTES = 256 << 20
"""The second rows of all points of a calibration take at most this much (2 MiB a point)."""


class _Scratch:
    """Buffers for bit patterns, bin indices and squares, reused across calls and points.

    Fresh buffers per call cost more than the ops that fill them on large tensors (the
    allocator hands back new pages every time).
    """

    def __init__(self, device: torch.device):
        self.words = torch.empty(0, dtype=torch.int64, device=device)
        self.index = torch.empty(0, dtype=torch.int64, device=device)
        self.squares = torch.empty(0, dtype=torch.float32, device=device)
        self.views: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        """Slices by length: a point sees the same size every batch, and slicing costs more
        than the ops on a small layer."""
        self.parallel_bytes = PARALLEL_BYTES
        """What is left for second rows of cells (:data:`PARALLEL_MIN`)."""

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        views = self.views.get(n)
        if views is None:
            if self.words.numel() < n:
                device = self.words.device
                self.words = torch.empty(n, dtype=torch.int64, device=device)
                self.index = torch.empty(n, dtype=torch.int64, device=device)
                self.squares = torch.empty(n, dtype=torch.float32, device=device)
                self.views.clear()
            if len(self.views) >= 256:  # shapes that vary without end
                self.views.clear()
            views = self.views[n] = (self.words[:n], self.index[:n], self.squares[:n])
        return views


class _Accumulator:
    def __init__(self, point: PointInfo, device: torch.device, scratch: _Scratch):
        self.point = point
        self.scratch = scratch
        self.device = device
        self.rows = 0
        """Rows of cells per half: 1, or 2 for a large point (0: no tensor yet)."""
        self.packed: torch.Tensor | None = None
        """Per half and row, bins in unsigned bit order: positive values first, then negative
        (histogram index = code ^ OFFSET). One row, or two for a large point (:data:`PARALLEL_MIN`),
        allocated when the first tensor comes."""
        self.unpacked: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        """Host-side (bin codes, counts, dropped-bit sums) of the occupied bins unpacked so far."""
        self.since_unpack = 0
        self.sumsq = [torch.zeros((), dtype=torch.float64, device=device) for _ in range(2)]
        self.channel_min: torch.Tensor | None = None
        self.channel_max: torch.Tensor | None = None
        self.extent: tuple[torch.Tensor, torch.Tensor] | None = None
        """Min and max of batches whose channel axis had another length than the latest's."""
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
        self.batches += 1
        if y.numel() == 0:
            return
        flat = y.view(-1)
        if self.rows == 0:
            self.rows = 2 if flat.numel() >= PARALLEL_MIN and self.scratch.parallel_bytes >= self._row_bytes else 1
            self.scratch.parallel_bytes -= (self.rows - 1) * self._row_bytes
        sumsq = self.sumsq[half]
        for values in (flat,) if flat.numel() <= CHUNK else flat.split(CHUNK):
            if self.since_unpack + values.numel() > histogram.MAX_PACKED_VALUES:
                self._unpack()
            if self.packed is None:
                self.packed = torch.zeros(2, self.rows, histogram.NUM_BINS, dtype=torch.int64, device=self.device)
            cells = self.packed[half]
            self.since_unpack += values.numel()
            words, index, squares = self.scratch.take(values.numel())
            words.copy_(values.view(torch.uint32))  # the bit pattern as a non-negative integer
            torch.bitwise_right_shift(words, histogram.SHIFT, out=index)  # the bin code
            words.add_(1 << histogram.PACK_SHIFT)
            rows = len(cells) if values.numel() % len(cells) == 0 else 1
            cells[:rows].scatter_add_(1, index.view(rows, -1), words.view(rows, -1))
            # float32 sums of one chunk (pairwise, ~1e-8 relative), float64 across chunks
            sumsq += torch.mul(values, values, out=squares).sum()
        axis = self.point.channel_axis % y.ndim if y.ndim > 1 else 0
        if y.ndim <= 1:
            cmin, cmax = y.reshape(-1), y.reshape(-1)
        else:  # amin + amax: aminmax over a leading dim is ~7x slower on CPU (BENCHMARKS.md)
            other = tuple(d for d in range(y.ndim) if d != axis)
            cmin, cmax = y.amin(dim=other), y.amax(dim=other)
        if self.channel_min is None or self.channel_min.shape != cmin.shape:
            if self.channel_min is not None:  # frames of another length on a channels-last layout
                self._keep_extent()
            self.channel_min, self.channel_max = cmin.clone(), cmax.clone()
        else:
            torch.minimum(self.channel_min, cmin, out=self.channel_min)
            torch.maximum(self.channel_max, cmax, out=self.channel_max)
        self.count += flat.numel()

    @property
    def _row_bytes(self) -> int:
        return 2 * histogram.NUM_BINS * 8

    def _keep_extent(self) -> None:
        """The channels start over when the channel axis changes length; the range seen so far
        must not go with them (it is the point's min and max)."""
        assert self.channel_min is not None and self.channel_max is not None
        lo, hi = self.channel_min.min(), self.channel_max.max()
        if self.extent is not None:
            lo, hi = torch.minimum(lo, self.extent[0]), torch.maximum(hi, self.extent[1])
        self.extent = (lo, hi)

    def _unpack(self, last: bool = False) -> None:
        """Move the packed cells into host int64 counts and bit sums of the occupied bins: at
        the end, and every 2^23 values before a cell could overflow (rare)."""
        if self.packed is None:
            packed = np.zeros((2, histogram.NUM_BINS), dtype=np.int64)
        else:  # one row is read in place: a sum would copy 2 MiB per point
            rows = self.packed[:, 0] if self.packed.shape[1] == 1 else self.packed.sum(dim=1)
            packed = rows.cpu().numpy()
        codes = np.flatnonzero(packed.any(axis=0))  # cells are >= 0; 5x faster than adding the halves
        counts, low = histogram.unpack(packed[:, codes], codes)
        if self.unpacked is not None:
            parts = [self.unpacked, (codes, counts, low)]
            codes = np.union1d(parts[0][0], codes)
            counts = np.zeros((2, len(codes)), dtype=np.int64)
            low = np.zeros_like(counts)
            for part_codes, part_counts, part_low in parts:
                at = np.searchsorted(codes, part_codes)
                counts[:, at] += part_counts
                low[:, at] += part_low
        self.unpacked = (codes, counts, low)
        if last:
            self.packed = None  # the cells go with the calibration
        elif self.packed is not None:
            self.packed.zero_()
        self.since_unpack = 0

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
        self._unpack(last=True)
        codes, counts_int, low = self.unpacked
        used = codes ^ histogram.OFFSET  # unsigned bit order -> histogram index
        order = np.argsort(used)
        used, counts_int, low = used[order], counts_int[:, order], low[:, order]
        nonfinite_mask = histogram.is_nonfinite(used)
        nonfinite = int(counts_int[:, nonfinite_mask].sum())
        keep = used[~nonfinite_mask]
        counts = counts_int[:, ~nonfinite_mask].astype(np.float64)
        sums = histogram.bin_sums(keep, counts_int[:, ~nonfinite_mask], low[:, ~nonfinite_mask])
        sumsq = np.array([float(t) for t in self.sumsq])
        cmin = self.channel_min.cpu().numpy().astype(np.float64) if self.channel_min is not None else np.zeros(0)
        cmax = self.channel_max.cpu().numpy().astype(np.float64) if self.channel_max is not None else np.zeros(0)
        lo, hi = histogram.bin_bounds(keep)
        if nonfinite or not np.isfinite(sumsq).all():
            # NaN/Inf poison the float sums, and squares of |x| > 2^64 overflow float32: take
            # the sum of squares from the exact bin sums, uniform within a bin (~1e-6 relative).
            limit = float(np.finfo(np.float32).max)  # the outermost bins reach to +-inf
            width = np.minimum(hi, limit) - np.maximum(lo, -limit)
            sumsq = np.array([float(np.sum(sums[h] ** 2 / np.maximum(counts[h], 1) + counts[h] * width**2 / 12))
                              for h in (0, 1)])
        if nonfinite:  # and min/max: fall back to the finite bins' extent
            means = sums.sum(0) / np.maximum(counts.sum(0), 1)
            order = np.argsort(lo)
            bottom = float(means[order[0]]) if len(lo) else 0.0  # mean of the lowest finite bin
            top = float(means[order[-1]]) if len(lo) else 0.0
            cmin = np.where(np.isfinite(cmin), cmin, bottom)
            cmax = np.where(np.isfinite(cmax), cmax, top)
        low, high = (float(cmin.min()), float(cmax.max())) if len(cmin) else (0.0, 0.0)
        if self.extent is not None:  # batches of another channel count: their range counts too
            kept_low, kept_high = (float(t) for t in self.extent)
            low = min(low, kept_low) if math.isfinite(kept_low) else low  # NaN/Inf: the fallback above holds
            high = max(high, kept_high) if math.isfinite(kept_high) else high
        return PointStats(
            count=int(counts.sum()),
            sumsq=float(sumsq.sum()),
            min=low,
            max=high,
            bins=keep.astype(np.int32),
            counts=counts,
            sums=sums,
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
        scratch = _Scratch(device)
        self.acc = {p.name: _Accumulator(p, device, scratch) for p in points}
        self.output_module = {p.modules[-1]: p.name for p in points if p.modules and not p.output_function}
        self.output_function = {p.output_function: p.name for p in points if p.output_function}
        self.input_module = {p.modules[0]: p.name for p in points if p.modules}
        self.weighted = {p.name: p for p in points if p.weight_module}
        self.input_point = next((p.name for p in points if p.kind == "input"), None)
        self.half = 0

    @property
    def watched(self) -> set[str]:
        return set(self.output_module) | set(self.input_module)

    def reads(self, kind: str, name: str) -> bool:
        """Whether the handler call ``kind`` (a method's name) for the module or functional op
        ``name`` feeds an accumulator."""
        if kind == "module_input":
            return name in self.input_module
        if kind == "module_output":
            return name in self.output_module
        return name in self.output_function

    def model_input(self, x: torch.Tensor | None) -> None:
        """The batch's first tensor, before the forward: the model input's point."""
        if self.input_point is not None and x is not None and x.is_floating_point():
            self.acc[self.input_point].observe(x, self.half)

    def module_input(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        point = self.input_module.get(name)
        if point is None or not args or not isinstance(args[0], torch.Tensor):
            return
        acc = self.acc[point]
        if isinstance(module, ops.INPUT_RANGE_MODULES):
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
        if point == key and op in ops.INPUT_RANGE_OPS:
            acc.observe_inputs(tensor_inputs(op, args, kwargs))
        return None

    def finish(self) -> dict[str, PointStats]:
        return {name: acc.finish() for name, acc in self.acc.items()}
