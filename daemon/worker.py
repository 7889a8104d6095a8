"""The worker process: owns torch and the user's model, runs one analysis, exits.

Started by :mod:`quantlens.daemon.workers` as ``python -m quantlens.daemon.worker --fd-in R
--fd-out W``. It imports torch first and says ``ready`` (the server keeps one such warm
spare), then waits for one ``run`` request. User code may print, write to fd 1, call
``sys.exit`` or ``os._exit``, crash or hang: fd 1 is pointed at stderr before anything
runs, so nothing the model prints can reach a protocol; messages go over the dedicated pipe
only. A fresh process per run means an edited model module is imported afresh, and a crash
takes only this process down.

Messages (msgpack maps, :mod:`quantlens.daemon.wire`), worker -> parent: ``ready``,
``progress`` (stage, done, total), ``result`` (calibration and measurements as msgpack
bytes, timings, and the report's path when one was asked for), ``failed`` (problems),
``exit`` (user code called ``os._exit``: where). Parent -> worker: ``run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import resource
import sys
import traceback
from pathlib import Path
from typing import Any

from quantlens.daemon import wire

OOM_HINT = "raise worker_memory_limit_mb, or calibrate with smaller batches (num_calibration_batches caps the count)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quantlens-worker")
    parser.add_argument("--fd-in", type=int, required=True)
    parser.add_argument("--fd-out", type=int, required=True)
    parser.add_argument("--memory-limit-mb", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.fd_out
    os.dup2(2, 1)  # user code's prints (and any C library writing fd 1) go to stderr
    sys.stdout = sys.stderr
    import torch  # noqa: F401 - the warm spare pays the import before any run is asked for

    from quantlens.core.torch_engine import pipeline  # noqa: F401
    # torch's import leaves ~10^5 objects that live as long as the process: frozen, the
    # cyclic collector stops walking them (each full collection took ~90 ms, several a run)
    gc.freeze()
    if args.memory_limit_mb > 0:
        _limit_address_space(args.memory_limit_mb)
    _report_os_exit(out)
    wire.send(out, {"t": "ready", "pid": os.getpid()})
    try:
        request = wire.Reader(args.fd_in).read(None)
    except wire.WireError:
        return 0  # the parent went away before asking for anything
    if request is None or request.get("t") != "run":
        return 0
    wire.send(out, run(request, out, args.memory_limit_mb))
    return 0


def run(request: dict[str, Any], out: int, memory_limit_mb: int) -> dict[str, Any]:
    """One analysis; every failure becomes a ``failed`` message with located problems."""
    from quantlens.core.activations import SearchMemo
    from quantlens.core.config import load_config
    from quantlens.core.errors import Location, Problem, QuantlensError
    from quantlens.core.stats import CalibrationResult
    from quantlens.core.torch_engine.pipeline import measure_project

    def progress(stage: str, done: int, total: int | None) -> None:
        wire.send(out, {"t": "progress", "stage": stage, "done": done, "total": total})

    config = None
    try:
        config = load_config(Path(request["directory"]), _path(request.get("config_file")),
                             request.get("overrides") or {}, request.get("override_text") or {})
        _roots[:] = config.roots
        cached = request.get("calibration")
        calibration = CalibrationResult.from_msgpack(cached) if cached else None
        progress("load", 0, None)
        memo = SearchMemo()
        calibration, measurements, timings = measure_project(config, progress, calibration,
                                                             sensitivity=bool(request.get("sensitivity")), memo=memo)
        reply: dict[str, Any] = {"t": "result", "calibration": calibration.to_msgpack(),
                                 "measurements": measurements.to_msgpack(), "timings": timings}
        if request.get("report_dir"):
            progress("report", 0, None)
            reply["report"] = str(_write_report(config, calibration, measurements, timings,
                                                Path(request["report_dir"]), memo))
        reply["searches"] = memo.to_msgpack()  # the diagnosis here searches what the run did
        return reply
    except QuantlensError as exc:
        return {"t": "failed", "problems": [_name_the_limit(p, memory_limit_mb).to_json() for p in exc.problems]}
    except MemoryError:
        where = config.location_of("model") if config else None
        return {"t": "failed", "problems": [Problem(
            f"the worker ran out of memory (worker_memory_limit_mb = {memory_limit_mb})", where, code="worker",
            hint=OOM_HINT).to_json()]}
    except Exception as exc:  # noqa: BLE001 - a bug of ours must not look like a hang
        if _is_allocation_failure(exc):
            where = config.location_of("model") if config else None
            return {"t": "failed", "problems": [Problem(
                f"the worker ran out of memory (worker_memory_limit_mb = {memory_limit_mb}): {exc}".splitlines()[0],
                where, code="worker", hint=OOM_HINT).to_json()]}
        where = config.location_of("model") if config else Location(str(request.get("directory", "")))
        detail = "".join(traceback.format_exception(exc)).strip()
        return {"t": "failed", "problems": [Problem(
            f"internal error in quantlens: {type(exc).__name__}: {exc}", where, code="internal",
            hint=f"please report it with the log; traceback:\n{detail}").to_json()]}


def _name_the_limit(problem: Any, memory_limit_mb: int) -> Any:
    """An allocation that failed inside user code (located there) says which limit it hit."""
    if "can't allocate memory" not in problem.message and "MemoryError" not in problem.message:
        return problem
    return dataclasses.replace(problem, message=f"out of memory (worker_memory_limit_mb = {memory_limit_mb}): "
                                                f"{problem.message}", hint=OOM_HINT)


def _write_report(config: Any, calibration: Any, measurements: Any, timings: dict[str, float], folder: Path,
                  memo: Any) -> Path:
    from quantlens.core.rediagnose import rediagnose
    from quantlens.daemon.report.html import write_report

    result = rediagnose(calibration, config, measurements, timings=timings, memo=memo)
    return write_report(result, folder, config.root, config.diagnosis)


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def _limit_address_space(limit_mb: int) -> None:
    """Cap the address space at what the worker holds now plus ``limit_mb``: torch's own
    footprint (hundreds of MB of mappings) is not the user's to budget."""
    with open("/proc/self/status", encoding="ascii") as status:
        size_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = size_kb * 1024 + limit_mb * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _is_allocation_failure(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)


_roots: list[Path] = []
"""The project's roots once its config is read: where ``os._exit`` counts as the user's call."""


def _report_os_exit(out: int) -> None:
    """``os._exit()`` ends the process at once, past every handler: say where it was called
    before it does, so the diagnostic can sit on that line."""
    real_exit = os._exit

    def reporting_exit(status: int) -> None:
        try:
            from quantlens.core.workspace import Workspace

            frames = Workspace(_roots).frames(sys._getframe(1))
            wire.send(out, {"t": "exit", "status": int(status),
                            "location": frames[0].to_json() if frames else None})
        finally:
            real_exit(status)

    os._exit = reporting_exit  # type: ignore[assignment]


if __name__ == "__main__":
    raise SystemExit(main())
