"""Worker processes: one warm spare, one run each, every fault turned into a located problem.

The language server and ``quantlens check`` never run the user's code themselves. A run
takes the warm spare (a worker that has imported torch and waits), sends it one request
and reads progress and the result over the worker's own pipe; a new spare starts when the
run ends (a result, a failure or a cancel), so the next run does not pay the torch import
and no run shares the CPU with one. The run is bounded in time
(``worker_timeout_s``) and the worker in address space (``worker_memory_limit_mb``).
Whatever happens to the worker (an exception, ``sys.exit``, ``os._exit``, a segfault, the
OOM killer, a hang) the caller gets a :class:`RunOutcome` whose problems say what happened
and during which batch, never an exception. No retry happens here: a failed run waits for
the next change of its inputs, so a crash cannot loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quantlens.core.errors import Location, Problem
from quantlens.daemon import wire

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_LIMIT_MB = 8192
START_TIMEOUT_S = 180.0
"""How long a new worker may take to import torch (a first, cold import takes ~20 s here)."""
SIGNALS = {signal.SIGSEGV: "a segmentation fault in native code", signal.SIGABRT: "an abort in native code",
           signal.SIGKILL: "out of memory, or killed from outside", signal.SIGBUS: "a bus error",
           signal.SIGFPE: "a floating-point exception in native code"}

Progress = Callable[[str, int, "int | None"], None]
LogLine = Callable[[str], None]


@dataclass(frozen=True)
class WorkerLimits:
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB


@dataclass
class RunOutcome:
    """What one run gave: the worker's result, or the problems that stopped it."""

    calibration: bytes | None = None
    measurements: bytes | None = None
    timings: dict[str, float] = field(default_factory=dict)
    report: str | None = None
    searches: bytes | None = None
    """The run's threshold searches (:meth:`SearchMemo.to_msgpack`): the diagnosis starts from them."""
    problems: list[Problem] = field(default_factory=list)
    cancelled: bool = False
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.measurements is not None and not self.cancelled


class _Worker:
    """One worker process and its two pipe ends."""

    def __init__(self, python: str, limits: WorkerLimits, log: LogLine | None):
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        args = [python, "-m", "quantlens.daemon.worker", "--fd-in", str(to_child_r), "--fd-out", str(from_child_w),
                "--memory-limit-mb", str(limits.memory_limit_mb)]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL if log else None,
            stderr=subprocess.PIPE if log else None, pass_fds=(to_child_r, from_child_w), close_fds=True,
            start_new_session=True,  # a Ctrl-C in a terminal reaches the CLI, which kills the worker
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.reader = wire.Reader(self.from_child)
        self.killing = threading.Lock()
        self.ready = False
        self.stderr_tail: list[str] = []
        if log and self.proc.stderr is not None:
            threading.Thread(target=self._pump, args=(self.proc.stderr, log), daemon=True).start()

    def _pump(self, stream: Any, log: LogLine) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self.stderr_tail = [*self.stderr_tail[-19:], line]
            log(line)

    def wait_ready(self, timeout_s: float) -> str | None:
        """None when the worker is ready, else why it is not."""
        if self.ready:
            return None
        try:
            message = self.reader.read(timeout_s)
        except wire.WireError:
            self.proc.wait()
            tail = " | ".join(self.stderr_tail[-3:])
            return f"the worker could not start (exit status {self.proc.returncode}){': ' + tail if tail else ''}"
        if message is None:
            return f"the worker did not start within {timeout_s:.0f} s"
        self.ready = message.get("t") == "ready"
        return None if self.ready else f"the worker sent {message.get('t')!r} instead of ready"

    def kill(self) -> None:
        """Kill and close, once: a cancel and the run's own end may both get here, and a second
        close of the pipe numbers must not hit the next spare's pipes, which may reuse them."""
        with self.killing:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # user code may have started children
                except (ProcessLookupError, PermissionError):
                    self.proc.kill()
            self.proc.wait()
            self.close()

    def close(self) -> None:
        for fd in (self.to_child, self.from_child):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.to_child = self.from_child = -1


class WorkerPool:
    """Runs analyses in worker processes, one at a time, with a warm spare when asked."""

    def __init__(self, limits: WorkerLimits | None = None, *, python: str | None = None, spare: bool = True,
                 log: LogLine | None = None):
        self.limits = limits or WorkerLimits()
        self.python = python or sys.executable
        self.keep_spare = spare
        self.log = log
        self._lock = threading.Lock()
        self._spare: _Worker | None = None
        self._current: _Worker | None = None
        self._cancelled = False
        self._closed = False
        if spare:
            self._spare = self._spawn()

    def _spawn(self) -> _Worker:
        return _Worker(self.python, self.limits, self.log)

    @property
    def spare_pid(self) -> int | None:
        return self._spare.proc.pid if self._spare is not None else None

    @property
    def current_pid(self) -> int | None:
        current = self._current
        return current.proc.pid if current is not None else None

    def set_limits(self, limits: WorkerLimits) -> None:
        """New limits apply to workers started from now on (the spare is replaced; during a run
        it is only dropped, and the run's end starts one under the new limits)."""
        if limits == self.limits:
            return
        self.limits = limits
        with self._lock:
            idle = self._current is None and not self._closed
            old, self._spare = self._spare, (self._spawn() if self.keep_spare and idle else None)
        if old is not None:
            old.kill()

    def run(self, request: dict[str, Any], on_progress: Progress | None = None,
            fallback: Location | None = None, wanted: Callable[[], bool] | None = None) -> RunOutcome:
        """Run ``request`` (see :mod:`quantlens.daemon.worker`) to its end, blocking.

        ``fallback`` is where problems with no better place go (the config's ``model =`` line).
        ``wanted`` is asked under the same lock as :meth:`cancel`, right before the worker is
        taken: when it says no (a newer change came in), nothing starts and the outcome is
        cancelled. A cancel that came before this run is otherwise forgotten here.
        """
        start = time.monotonic()
        with self._lock:
            if wanted is not None and not wanted():
                return RunOutcome(cancelled=True)
            worker, self._spare = self._spare or self._spawn(), None
            self._current = worker
            self._cancelled = False
        try:
            outcome = self._drive(worker, request, on_progress, fallback)
        finally:
            with self._lock:
                self._current = None
            worker.kill()
            self._replace_spare()
        outcome.elapsed_s = time.monotonic() - start
        return outcome

    def _replace_spare(self) -> None:
        """Start the spare the run took, now that the run is over: its torch import competes
        with no run for the CPU (a run right after a cancel waits for that import instead)."""
        with self._lock:
            if self.keep_spare and not self._closed and self._spare is None:
                self._spare = self._spawn()

    def cancel(self) -> None:
        """Stop the run in progress (its worker is killed; the spare takes the next run)."""
        with self._lock:
            self._cancelled = True
            current = self._current
        if current is not None:
            current.kill()

    def close(self) -> None:
        """Kill every worker; a run still ending starts no new spare."""
        with self._lock:
            self._closed = True
        self.cancel()
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.kill()

    def _drive(self, worker: _Worker, request: dict[str, Any], on_progress: Progress | None,
               fallback: Location | None) -> RunOutcome:
        stage: tuple[str, int, int | None] = ("start", 0, None)
        why = worker.wait_ready(START_TIMEOUT_S)
        if self._cancelled:
            return RunOutcome(cancelled=True)
        if why is not None:
            return RunOutcome(problems=[Problem(why, fallback, code="worker",
                                                hint=f"check that `{self.python} -m quantlens.daemon.worker` runs")])
        deadline = time.monotonic() + self.limits.timeout_s  # the user's budget: a cold torch import is not theirs
        exit_call: dict[str, Any] | None = None
        try:
            wire.send(worker.to_child, {"t": "run", **request})
            while True:
                message = worker.reader.read(max(0.0, deadline - time.monotonic()))
                if message is None:
                    return RunOutcome(problems=[Problem(
                        f"the worker was killed after {self.limits.timeout_s:g} s without finishing {_doing(stage)}",
                        fallback, code="worker-timeout",
                        hint="a hang or an endless loop in the model, the data function or at import time; "
                             "or raise worker_timeout_s")])
                kind = message.get("t")
                if kind == "progress":
                    stage = (str(message["stage"]), int(message["done"]), message.get("total"))
                    if on_progress is not None:
                        on_progress(*stage)
                elif kind == "exit":
                    exit_call = message
                elif kind == "result":
                    return RunOutcome(calibration=message["calibration"], measurements=message["measurements"],
                                      timings=dict(message.get("timings", {})), report=message.get("report"),
                                      searches=message.get("searches"))
                elif kind == "failed":
                    return RunOutcome(problems=[Problem.from_json(p) for p in message["problems"]])
        except (wire.WireError, OSError):
            pass
        if self._cancelled:
            return RunOutcome(cancelled=True)
        worker.proc.wait()
        return RunOutcome(problems=[_death(worker.proc.returncode, exit_call, stage, fallback)])


def _death(code: int, exit_call: dict[str, Any] | None, stage: tuple[str, int, int | None],
           fallback: Location | None) -> Problem:
    """Why a worker died without a result, in words, at the best place known."""
    during = _doing(stage)
    if exit_call is not None:
        where = Location.from_json(exit_call.get("location")) or fallback  # the worker kept user frames only
        return Problem(f"user code called os._exit({exit_call.get('status')}) during {during}", where, code="user-code",
                       hint="os._exit ends the process at once; raise an exception instead")
    if code < 0:
        try:
            sig = signal.Signals(-code)
            label = f"{sig.name}: {SIGNALS[sig]}" if sig in SIGNALS else sig.name
        except ValueError:
            label = f"signal {-code}"
        return Problem(f"the worker crashed ({label}) during {during}", fallback, code="worker-crash",
                       hint="a crash in native code (a torch extension, ctypes) or the memory limit "
                            "(worker_memory_limit_mb); the worker's log has its last lines")
    return Problem(f"the worker exited with status {code} during {during} without a result", fallback,
                   code="worker-crash", hint="user code ended the process (os._exit or a C exit)")


def _doing(stage: tuple[str, int, int | None]) -> str:
    """'calibration batch 3 of 16' from the last progress the worker reported."""
    name, done, total = stage
    of = f" of {total}" if total else ""
    if name == "calibrate":
        return f"calibration batch {done + 1}{of}"
    if name == "simulate":
        return f"simulation batch {done + 1}{of}"
    if name == "verify":
        return f"verification pass {done + 1}{of}"
    if name == "confirm":
        return f"confirmation pass {done + 1}{of} (a verified change measured on every batch)"
    if name == "sensitivity":
        return f"sensitivity pass {done + 1}{of}"
    if name == "thresholds":
        return "the threshold search"
    if name == "diagnose":
        return "the diagnosis of the simulation"
    if name == "report":
        return "the report"
    if name == "load":
        return "loading the model and the data"
    return "starting"


def python_has_quantlens(python: str) -> bool:
    """True when ``python`` can import the worker (the server may run on another interpreter)."""
    probe = subprocess.run([python, "-c", "import quantlens.daemon.worker"], capture_output=True, timeout=60,
                           check=False)
    return probe.returncode == 0


