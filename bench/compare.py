"""Two statistics collectors side by side: the working tree's against a git revision's.

For work on ``core/torch_engine/collector.py``: the full benchmark's numbers move by 10-20%
between runs on a shared machine, more than most changes to the collector, so this runs both
collectors in one process, in interleaved rounds, on the same model and batches.

    .venv/bin/python bench/compare.py REV [--rounds 5] [--data-factor 10] [--write FILE] [FOLDER ...]

The revision's collector is imported against today's ``quantlens.core`` (it must still fit).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch

import quantlens.core.torch_engine.calibrate as calibrate_module
from quantlens.core.config import load_config
from quantlens.core.torch_engine.loading import build_model, iterate_batches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH_MODELS, MODEL_FIXTURES, ROOT, interleaved_ratios  # noqa: E402

COLLECTOR = "core/torch_engine/collector.py"


def collector_at(rev: str, scratch: Path) -> ModuleType:
    source = subprocess.run(["git", "show", f"{rev}:{COLLECTOR}"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    path = scratch / "collector_at_rev.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("collector_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(folder: Path, old: type, rounds: int, data_factor: int) -> tuple[float, float, float]:
    config = load_config(folder)
    roots = [config.root]
    model, sites = build_model(config.model, roots, config.weights)
    batches = list(iterate_batches(config.data, roots, torch.device("cpu"))) * data_factor
    new = calibrate_module.Collector

    def plain() -> None:
        with torch.no_grad():
            for b in batches:
                model(*b.args, **b.kwargs)

    def calibrate_with(collector: type) -> None:
        calibrate_module.Collector = collector
        try:
            calibrate_module.calibrate_batches(model, batches, roots, sites)
        finally:
            calibrate_module.Collector = new

    t_plain, ratios = interleaved_ratios(
        {"plain": plain, "old": lambda: calibrate_with(old), "new": lambda: calibrate_with(new)}, "plain", rounds)
    return t_plain, ratios["old"], ratios["new"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("rev", help="git revision whose collector is the baseline")
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-factor", type=int, default=10)
    parser.add_argument("--write", type=Path, help="also write the table, command and machine to this file")
    args = parser.parse_args()
    folders = args.folders or [ROOT / "fixtures" / f for f in MODEL_FIXTURES] + BENCH_MODELS
    head = (f"| fixture | plain forward | collector at {args.rev} | working tree | change |", "|---|---|---|---|---|")
    rows = []
    print("\n".join(head))
    with tempfile.TemporaryDirectory() as scratch:
        old = collector_at(args.rev, Path(scratch)).Collector
        for folder in folders:
            t_plain, r_old, r_new = compare(folder, old, args.rounds, args.data_factor)
            rows.append(f"| {folder.name} | {1e3 * t_plain:.0f} ms | {r_old:.2f}x | {r_new:.2f}x | "
                        f"{100 * (r_new / r_old - 1):+.0f}% |")
            print(rows[-1], flush=True)
    if args.write:
        tree = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        args.write.write_text("\n".join([
            "# Collector A/B",
            "",
            f"`.venv/bin/python bench/compare.py {args.rev} --write {args.write}` on the working tree at "
            f"{tree.strip()}: calibration / plain forward with each collector, {args.rounds} interleaved rounds "
            f"(median of per-round ratios), calibration batches repeated {args.data_factor}x.",
            f"Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}.",
            "",
            *head,
            *rows,
        ]) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
