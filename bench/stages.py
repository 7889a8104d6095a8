"""The default full analysis, stage by stage, as ratios to a plain float forward.

For each fixture, interleaved rounds run (a) a plain float forward over the calibration
batches and (b) the whole analysis ``quantlens check`` runs in its worker (calibration,
thresholds, the simulation on ``num_simulation_batches``, the diagnosis that picks the
changes to verify, their verification), in this process, on the same batches. Each stage's
time (the engine's own timings) and the total are divided by the forward's time of the same
round; the median over rounds is reported. The final diagnosis (numpy, in the CLI or the
language server) is reported in milliseconds beside.

    .venv/bin/python bench/stages.py [--rounds 5] [--fixtures ...] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from quantlens.core.activations import SearchMemo
from quantlens.core.config import load_config
from quantlens.core.rediagnose import rediagnose
from quantlens.core.torch_engine.loading import build_model, iterate_batches
from quantlens.core.torch_engine.pipeline import measure_project

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ["audio_cnn", "audio_cnn:activation_n_bits=6", "audio_cnn:activation_n_bits=5",
            "audio_cnn:activation_n_bits=4", "mobilenet_like", "deit_tiny", "frame_tagger", "logits_softmax", "two_branch_concat",
            "activations_zoo", "clean_mlp", "bench/resnet18_like",
            'bench/resnet18_like:data="data.py:eight_batches"']
STAGES = ("calibrate", "thresholds", "simulate", "choose", "verify")
HEADING = "## Full analysis by stage"


def bench(name: str, rounds: int) -> dict[str, Any]:
    """``name`` is a fixture, or ``fixture:key=value`` for a fixture under another setting (a
    lower bit width, so that there are findings whose fixes are verified), or a folder of the
    repository (``bench/resnet18_like``: larger, 39 points, a forward of seconds)."""
    folder, _, setting = name.partition(":")
    overrides = {setting.split("=")[0]: json.loads(setting.split("=")[1])} if setting else None
    config = load_config(ROOT / folder if "/" in folder else ROOT / "fixtures" / folder, overrides=overrides)
    model, _ = build_model(config.model, config.roots, config.weights)
    model.eval()
    batches = list(iterate_batches(config.data, config.roots, torch.device("cpu"), config.num_calibration_batches))

    def forward() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for b in batches:
                model(*b.args, **b.kwargs)
        return time.perf_counter() - start

    def analysis() -> tuple[float, dict[str, float], float, int]:
        start = time.perf_counter()
        memo = SearchMemo()
        calibration, measurements, timings = measure_project(config, memo=memo)
        searches = memo.to_msgpack()  # what the worker sends with its result
        wall = time.perf_counter() - start - timings.get("load", 0.0)
        start = time.perf_counter()
        final = SearchMemo()
        final.load(searches, calibration)
        rediagnose(calibration, config, measurements, memo=final)
        return wall, timings, time.perf_counter() - start, len(measurements.verified or [])

    forward()
    analysis()  # warm-up: imports, the first conv's kernel selection
    ratios: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
    forwards, diagnoses, walls = [], [], []
    verified = 0
    for _ in range(rounds):
        base = forward()
        wall, timings, diagnose, verified = analysis()
        forwards.append(base)
        diagnoses.append(diagnose)
        walls.append(wall)
        for stage in STAGES:
            ratios[stage].append(timings.get(stage, 0.0) / base)
        ratios["total"].append(wall / base)
    _, sampled, _ = measure_project(config)
    _, everything, _ = measure_project(dataclasses.replace(config, num_simulation_batches=None))
    sampling = {"output_sqnr_db": sampled.output.error.sqnr_db, "output_sqnr_db_all": everything.output.error.sqnr_db,
                "largest_point_difference_db": max(
                    (abs(m.cumulative.sqnr_db - everything.points[n].cumulative.sqnr_db)
                     for n, m in sampled.points.items()
                     if m.cumulative is not None and everything.points[n].cumulative is not None), default=0.0)}
    return {"fixture": name, "batches": len(batches), "sampling": sampling,
            "simulated": config.num_simulation_batches or len(batches),
            "verified": verified, "forward_ms": 1000 * statistics.median(forwards),
            "diagnose_ms": 1000 * statistics.median(diagnoses), "total_ms": 1000 * statistics.median(walls),
            "ratios": {k: statistics.median(v) for k, v in ratios.items()}}


def render(rows: list[dict[str, Any]], rounds: int, command: str) -> str:
    lines = [
        HEADING, "",
        f"Produced by `{command}`. The whole default analysis (what `quantlens check` runs in its worker, "
        "model loading excluded) against a plain float forward over the same calibration batches, in "
        f"interleaved rounds in one process (median over {rounds} rounds of each round's ratio). *choose* is "
        "the diagnosis of the first simulation that picks the changes to verify (numpy); *total* is the wall "
        "time of the run, so it also holds what no stage times (the validation pass, moving results). The "
        "final diagnosis runs in the CLI or the language server (numpy), from the threshold searches the worker "
        "sends with its result, and is given in milliseconds. "
        f"Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads).",
        "",
        "What scales with the data (calibrate: every batch; simulate and verify: the first "
        "`num_simulation_batches`, 2 by default) is near its floor on a model whose forward does real work "
        "(audio_cnn, shaped like the audio networks of issue #9: calibration about 2x, that is the forward once "
        "plus the statistics of every value, about as much again; the simulation of 2 of 8 batches about 0.6x, "
        "its float passes replayed from calibration's recording of those batches, so only the quantized passes "
        "run; a verified change costs the layers after its first changed point, the module calls before it "
        "reused from the simulation's tape: up to 0.3x for a change at the input or a global setting; a change "
        "the simulated batches disagree on (one gains `min_fix_gain_db`, another not), and the top recommendation "
        "when its batches lie more than 2 dB apart, are measured again on the batches after the simulated ones, "
        "beside the unchanged model (a float forward and two quantized passes per batch, the change reusing the "
        "module calls the unchanged pass recorded before its first point): most of mobilenet_like's and "
        "logits_softmax's verify. "
        "`audio_cnn:activation_n_bits=N` is the same model at N-bit activations, where there are findings and "
        "their fixes are verified: at 4 bits 4 changes are verified: both bit widths, a whole quantized pass, "
        "and three points at 16 bits, one of them near the input). "
        "`bench/resnet18_like` (a residual network of 11.7 M parameters, 39 points) is given twice: on its "
        "config's 2 batches, where the simulation covers every batch (the float passes replayed, the quantized "
        "pass and each weighted layer's isolated rerun on its float input still run, about 2.8x), and on 8 "
        "(`data.py:eight_batches`), the fixtures' count, where it covers a quarter of them. "
        "What does not (the threshold search of every point "
        "and error method, the diagnosis, Python per call) is tens to hundreds of milliseconds, which on the "
        "small fixtures, whose whole forward takes 0.5-20 ms, is tens of forwards: there *total, ms* is the number "
        "that matters for a save. Between runs on this shared machine a ratio moves by up to 30% (on 2026-12-02, "
        "two runs an hour apart gave audio_cnn at 5 bits 4.78x and 3.67x, its simulation 0.88x and 0.69x).",
        "",
        "| fixture | batches (simulated) | changes verified | plain forward | calibrate | thresholds | simulate "
        "| choose | verify | **total** | total, ms | final diagnosis |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = row["ratios"]
        lines.append(
            f"| {row['fixture']} | {row['batches']} ({row['simulated']}) | {row['verified']} | "
            f"{row['forward_ms']:.1f} ms | {r['calibrate']:.2f}x | {r['thresholds']:.2f}x | {r['simulate']:.2f}x | "
            f"{r['choose']:.2f}x | {r['verify']:.2f}x | **{r['total']:.2f}x** | {row['total_ms']:.0f} ms | "
            f"{row['diagnose_ms']:.0f} ms |")
    lines += [
        "",
        "The errors and the verification are measured on the first `num_simulation_batches` batches: the output "
        "SQNR measured so, against the same over every calibration batch, and the largest difference of any "
        "point's cumulative SQNR between the two:",
        "",
        "| fixture | output SQNR, 2 batches | output SQNR, every batch | largest point difference |",
        "|---|---|---|---|",
    ]
    for row in rows:
        m = row["sampling"]
        lines.append(f"| {row['fixture']} | {m['output_sqnr_db']:.2f} dB | {m['output_sqnr_db_all']:.2f} dB | "
                     f"{m['largest_point_difference_db']:.2f} dB |")
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """``text`` with this bench's section replaced (appended when absent); the rest kept."""
    found = re.search(rf"^{re.escape(HEADING)}$", text, re.M)
    if found is None:
        return text.rstrip("\n") + "\n\n" + section
    following = re.search(r"^## ", text[found.end():], re.M)
    end = found.end() + following.start() if following else len(text)
    return text[:found.start()] + section + ("\n" + text[end:] if following else "")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fixtures", nargs="*", default=FIXTURES)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    gc.freeze()  # as the worker does once torch is imported (quantlens.daemon.worker)
    rows = []
    for name in args.fixtures:
        row = bench(name, args.rounds)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.write:
        command = " ".join([".venv/bin/python bench/stages.py", *sys.argv[1:]])
        old = args.write.read_text(encoding="utf-8") if args.write.exists() else ""
        args.write.write_text(replace_section(old, render(rows, args.rounds, command)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
