"""Benchmarks, measured side by side in one run (ratios, not absolute seconds).

For every fixture (fixtures/*/quantlens.toml):

* calibration with quantlens statistics / plain float forward over the same batches;
* the same ratio for torch.ao.quantization's HistogramObserver and MinMaxObserver attached
  at the same points (through the same hooks), and for the hooks alone;
* threshold search for all points and all five error methods;
* peak memory (RSS) of calibration with 1x and 10x the data, each in a fresh process.

    .venv/bin/python bench/run.py [--repeats 5] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

from quantlens.core.activations import quantize_activations
from quantlens.core.config import load_config
from quantlens.core.settings import QuantSettings
from quantlens.core.stats import PointInfo
from quantlens.core.torch_engine.calibrate import calibrate_batches
from quantlens.core.torch_engine.instrument import Instrumentation, first_tensor
from quantlens.core.torch_engine.loading import build_model, iterate_batches

ROOT = Path(__file__).resolve().parents[1]
MODEL_FIXTURES = ["mobilenet_like", "deit_tiny", "two_branch_concat", "activations_zoo", "clean_mlp"]
"""The fixtures with models of their own (the scenario folders reuse these models)."""
BENCH_MODELS = [ROOT / "bench" / "resnet18_like"]
"""Models of realistic width, written for the benchmark only."""


class _Observe:
    """Instrumentation handler feeding one torch.ao observer per quantlens point."""

    def __init__(self, points: list[PointInfo], make_observer: Callable[[], Any] | None):
        self.by_module = {p.modules[-1]: p.name for p in points if p.modules and not p.output_function}
        self.by_function = {p.output_function: p.name for p in points if p.output_function}
        self.observers = {p.name: make_observer() for p in points} if make_observer else {}

    def module_input(self, name: str, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        return None

    def module_output(self, name: str, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        point = self.by_module.get(name)
        if point is not None and self.observers:
            self.observers[point](first_tensor(output).float())
        return None

    def function_output(self, key: str, op: str, func: Callable, args: tuple[Any, ...], kwargs: dict[str, Any],
                        output: Any) -> None:
        point = self.by_function.get(key)
        if point is not None and self.observers:
            self.observers[point](first_tensor(output).float())
        return None


def _time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def interleaved_ratios(variants: dict[str, Callable[[], Any]], baseline: str,
                       rounds: int) -> tuple[float, dict[str, float]]:
    """Median over rounds of each variant's time / the baseline's time in the same round.

    Every round runs every variant once, so a burst of load on a shared machine slows the
    baseline and the variants alike instead of landing on whichever ran during it.
    """
    for fn in variants.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = times[baseline]
    return statistics.median(base), {
        name: statistics.median(t / b for t, b in zip(ts, base)) for name, ts in times.items() if name != baseline
    }


def bench_fixture(folder: Path, repeats: int, data_factor: int) -> dict[str, Any]:
    config = load_config(folder)
    roots = [config.root]
    model, sites = build_model(config.model, roots, config.weights)
    once = list(iterate_batches(config.data, roots, torch.device("cpu")))
    batches = once * data_factor
    calibration = calibrate_batches(model, once, roots, sites)
    points = calibration.points

    def plain_once() -> None:
        with torch.no_grad():
            for b in once:
                model(*b.args, **b.kwargs)

    def plain() -> None:
        with torch.no_grad():
            for b in batches:
                model(*b.args, **b.kwargs)

    def observed(make: Callable[[], Any] | None) -> None:
        handler = _Observe(points, make)
        with torch.no_grad(), Instrumentation(model, handler, watched=set(handler.by_module)):
            for b in batches:
                model(*b.args, **b.kwargs)

    t_plain, ratios = interleaved_ratios({
        "plain": plain,
        "quantlens": lambda: calibrate_batches(model, batches, roots, sites),
        "hooks": lambda: observed(None),
        "histogram": lambda: observed(HistogramObserver),
        "minmax": lambda: observed(MinMaxObserver),
    }, "plain", repeats)
    _, once_ratios = interleaved_ratios(
        {"plain": plain_once, "quantlens": lambda: calibrate_batches(model, once, roots, sites)}, "plain", repeats)
    settings = QuantSettings()
    t_search = _time(lambda: quantize_activations(calibration, settings), repeats)
    breakdown = op_breakdown(plain, lambda: calibrate_batches(model, batches, roots, sites))
    return {
        "fixture": folder.name,
        "points": len(points),
        "batches": len(batches),
        "samples": calibration.num_samples * data_factor,
        "plain_forward_s": t_plain,
        "quantlens_ratio": ratios["quantlens"],
        "quantlens_ratio_1x": once_ratios["quantlens"],
        "hooks_only_ratio": ratios["hooks"],
        "histogram_observer_ratio": ratios["histogram"],
        "minmax_observer_ratio": ratios["minmax"],
        "search_all_methods_ms": 1e3 * t_search,
        "statistics_ops": breakdown,
    }


def _self_times(fn: Callable[[], Any]) -> dict[str, float]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}


def op_breakdown(plain: Callable[[], Any], calibrate: Callable[[], Any], top: int = 6) -> dict[str, float]:
    """Where calibration's extra time goes: torch ops' self time beyond the plain forward's,
    as a fraction of the plain forward's total op time (profiler, one run each)."""
    base = _self_times(plain)
    ours = _self_times(calibrate)
    forward = sum(base.values())
    extra = {op: t - base.get(op, 0.0) for op, t in ours.items()}
    ranked = sorted(extra.items(), key=lambda kv: -kv[1])[:top]
    return {op.removeprefix("aten::"): t / forward for op, t in ranked if t > 0}


MEMORY_SCRIPT = """
import sys, torch
from pathlib import Path
from quantlens.core.config import load_config
from quantlens.core.torch_engine.calibrate import calibrate_batches
from quantlens.core.torch_engine.loading import build_model, iterate_batches
folder, times = Path(sys.argv[1]), int(sys.argv[2])
config = load_config(folder)
model, sites = build_model(config.model, [config.root], config.weights)
def data():
    for _ in range(times):
        yield from iterate_batches(config.data, [config.root], torch.device("cpu"))
def peak_kb():  # VmHWM: this process's peak RSS (ru_maxrss would include the parent's, across fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
calibrate_batches(model, [next(iter(data()))], [config.root], sites)  # warm: discovery, allocator
before = peak_kb()
result = calibrate_batches(model, data(), [config.root], sites)
after = peak_kb()
print(after, after - before, result.num_samples)
"""


FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc raises its mmap threshold each time a large block is freed; later tensors then come
from the heap, which fragments and keeps its pages (peak RSS creeps up to a plateau). A fixed
threshold returns every large block, so the RSS shows what the tool itself holds."""


def peak_memory(folder: Path, times: int, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(folder), str(times)],
                         capture_output=True, text=True, check=True, env={**os.environ, **(env or {})})
    peak_kb, growth_kb, samples = out.stdout.split()
    return int(peak_kb) / 1024, int(growth_kb) / 1024, int(samples)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, help="write the results into this markdown file (its other "
                                                    "'## ' sections, such as bench/lsp.py's, are kept)")
    parser.add_argument("--fixtures", nargs="*", default=MODEL_FIXTURES)
    parser.add_argument("--memory-factors", type=int, nargs="+", default=[1, 10, 60],
                        help="measure peak memory with the calibration data repeated this often (default 1 10 60)")
    parser.add_argument("--data-factor", type=int, default=10,
                        help="time calibration over the fixture's batches repeated this often (default 10)")
    args = parser.parse_args()
    folders = [ROOT / "fixtures" / f for f in args.fixtures] + BENCH_MODELS
    rows = []
    for folder in folders:
        row = bench_fixture(folder, args.repeats, args.data_factor)
        memory = {}
        for factor in args.memory_factors:
            peak, growth, samples = peak_memory(folder, factor)
            _, fixed_growth, _ = peak_memory(folder, factor, FIXED_MMAP_THRESHOLD)
            memory[factor] = {"samples": samples, "peak_rss_mb": peak, "rss_growth_mb": growth,
                              "rss_growth_fixed_mmap_threshold_mb": fixed_growth}
        row["memory"] = memory
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.write:
        old = args.write.read_text(encoding="utf-8") if args.write.exists() else ""
        head = render(rows, args.repeats, args.data_factor, args.memory_factors)
        args.write.write_text(replace_head(old, head), encoding="utf-8")
    return 0


def replace_head(text: str, head: str) -> str:
    """``text`` with the part this bench owns replaced by ``head``: from the start up to the first
    ``## `` heading that ``head`` does not hold. Every other ``## `` section (bench/lsp.py writes
    "## Language server") is kept as it is, so one bench's ``--write`` never erases another's."""
    mine = {line for line in head.splitlines() if line.startswith("## ")}
    foreign = (m.start() for m in re.finditer(r"^## .*$", text, re.M) if m.group(0) not in mine)
    rest = text[next(foreign, len(text)):]
    return head.rstrip("\n") + "\n" + ("\n" + rest if rest else "")


def render(rows: list[dict[str, Any]], repeats: int, data_factor: int, memory_factors: list[int]) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (`.venv/bin/python bench/run.py --write BENCHMARKS.md`). All numbers of one "
        "fixture are measured side by side in one process: after a warm-up, each of "
        f"{repeats} rounds runs every variant once, and a ratio is the median over rounds of the variant's "
        "time / the plain forward's time in the same round (load bursts on a shared machine hit both).",
        f"Machine: {platform.system()} {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}.",
        "",
        "Ratios are wall time / plain float forward over the same batches (lower is better; 1.0 is the",
        f"physical floor), over each fixture's calibration batches repeated {data_factor}x. quantlens = full",
        "calibration (includes discovering the points on the first batch, whose hooks are replayed into",
        "the collectors rather than run again, and the fixed cost of allocating",
        "and reading back the accumulators); `1x data` = the same over the fixture's batches once, where",
        "those fixed costs weigh most. hooks only = the same module hooks and function mode with nothing",
        "recorded; the torch.ao observers are attached at quantlens's points through those same hooks.",
        "",
        "| fixture | points | batches x samples | plain forward | quantlens | quantlens, 1x data | hooks only | HistogramObserver | MinMaxObserver | threshold search, 5 methods |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['fixture']} | {r['points']} | {r['batches']} x {r['samples'] // r['batches']} | "
            f"{1e3 * r['plain_forward_s']:.1f} ms | {r['quantlens_ratio']:.2f}x | {r['quantlens_ratio_1x']:.2f}x | "
            f"{r['hooks_only_ratio']:.2f}x | "
            f"{r['histogram_observer_ratio']:.2f}x | {r['minmax_observer_ratio']:.2f}x | {r['search_all_methods_ms']:.0f} ms |")
    lines += [
        "",
        "Peak memory of calibration (peak RSS, VmHWM, of a fresh process; growth = peak added by the",
        "calibration pass itself after a warm-up calibration on one batch), with the calibration data",
        "repeated " + ", ".join(f"{f}x" for f in memory_factors) + ". The accumulators (2 halves x 2^17 packed",
        "int64 cells: 2 MiB a point, 4 MiB for a point of 2^17 values or more, which scatters into two rows) and the shared scratch buffers are allocated per calibration, so",
        "the warm-up's peak already holds one set of them. The last columns",
        "run with glibc's mmap threshold fixed (" + ", ".join(f"`{k}={v}`" for k, v in FIXED_MMAP_THRESHOLD.items())
        + "): by default glibc raises",
        "the threshold whenever a large block is freed, later tensors come from a heap that fragments,",
        "and peak RSS creeps up to a plateau that says more about the allocator than about the tool.",
        "",
        "| fixture | samples | " + " | ".join(f"peak RSS {f}x" for f in memory_factors) + " | "
        + " | ".join(f"growth {f}x" for f in memory_factors) + " | "
        + " | ".join(f"growth {f}x, fixed threshold" for f in memory_factors) + " |",
        "|---|---|" + "---|" * (3 * len(memory_factors)),
    ]
    for r in rows:
        m = [r["memory"][f] for f in memory_factors]
        lines.append(f"| {r['fixture']} | " + " / ".join(str(x["samples"]) for x in m) + " | "
                     + " | ".join(f"{x['peak_rss_mb']:.0f} MB" for x in m) + " | "
                     + " | ".join(f"{x['rss_growth_mb']:.0f} MB" for x in m) + " | "
                     + " | ".join(f"{x['rss_growth_fixed_mmap_threshold_mb']:.0f} MB" for x in m) + " |")
    lines += [
        "",
        "Where calibration's extra time goes (torch profiler, one run of each: every op's self time in",
        "calibration minus its self time in the plain forward, as a multiple of the plain forward's total",
        "op time; the six largest). Forward ops here (convolution, linear) are the forward's own ops",
        "taking longer among the statistics ops than alone (the first batch runs once), and fill_ is",
        "mostly zeroing the accumulators. What is left of the quantlens ratio",
        "above 1.0 plus these is Python: hooks, the function mode and the per-call dispatch of the",
        "statistics ops, which is why the tiny fixtures (a few microseconds of work per layer) fare worst.",
        "",
        "To compare two collectors on this noisy machine, `bench/compare.py REV` runs both in one",
        "process, in interleaved rounds; its last result is in bench/collector-ab.md.",
        "",
        "| fixture | extra time by op (x plain forward) |",
        "|---|---|",
    ]
    for r in rows:
        ops = ", ".join(f"{op} {share:.2f}" for op, share in r["statistics_ops"].items())
        lines.append(f"| {r['fixture']} | {ops} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
