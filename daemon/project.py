"""One quantlens project as the daemon sees it: config, cached statistics, last measurements.

The language server and the headless watch mode hold a :class:`Project` per config file.
:meth:`Project.snapshot` is the one "diagnose this state" call every feature reads (as
ruff's server has one ``generate_diagnostics``): it re-reads nothing but the config, and
re-diagnoses from cached statistics with numpy, so a config edit costs milliseconds. What
needs the model (calibration, simulation) is a worker run, asked for with
:meth:`Project.plan` and taken in with :meth:`Project.accept`.

Torch-free: the server process imports this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from quantlens.core.activations import SearchMemo
from quantlens.core.config import ProjectConfig, find_config, load_config
from quantlens.core.errors import Location, Problem, QuantlensError
from quantlens.core.measurements import Measurements, choice_key
from quantlens.core.rediagnose import rediagnose
from quantlens.core.result import AnalysisResult
from quantlens.core.stats import CalibrationResult
from quantlens.daemon.cache import Cache, Inputs, project_inputs
from quantlens.daemon.workers import RunOutcome

CACHE_LAYOUT = 1
"""Version of the cache entry's layout (calibration + measurements + timings)."""
REPEATED_FAILURES = 2
"""After this many failed runs on the same inputs, wait for a change instead of retrying."""


@dataclass
class Snapshot:
    """One diagnosed state of a project: what every LSP feature reads."""

    result: AnalysisResult | None
    problems: list[Problem]
    """Config errors and the last run's failure: shown where they are located."""
    estimated: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class Plan:
    """What a worker run must do: the request, and whether the statistics are reused."""

    request: dict[str, Any]
    recalibrate: bool
    inputs: Inputs
    settings_json: dict[str, Any]


@dataclass
class Project:
    directory: Path
    """The folder that holds the config file."""
    config_file: Path | None = None
    cache: Cache | None = None
    config: ProjectConfig | None = None
    config_problems: list[Problem] = field(default_factory=list)
    inputs: Inputs | None = None
    calibration: CalibrationResult | None = None
    calibration_key: str | None = None
    measurements: Measurements | None = None
    timings: dict[str, float] = field(default_factory=dict)
    run_problems: list[Problem] = field(default_factory=list)
    report: str | None = None
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    memo: SearchMemo = field(default_factory=SearchMemo)

    @staticmethod
    def discover(folder: Path, config_path: str | None = None) -> list[Project]:
        """The projects of a workspace folder: the configured file, else the folder's own
        config, else configs in its sub-folders (a few levels down, not in hidden or
        virtual-environment folders)."""
        if config_path:
            path = Path(config_path)
            path = path if path.is_absolute() else folder / path
            return [Project(path.resolve().parent, path.resolve())]
        found = find_config(folder)
        if found is not None:
            return [Project(folder.resolve(), found[0].resolve())]
        projects = []
        for candidate in sorted(_config_candidates(folder)):
            found = find_config(candidate.parent)
            if found is not None and found[0] == candidate:
                projects.append(Project(candidate.parent.resolve(), candidate.resolve()))
        return projects

    @property
    def files(self) -> set[Path]:
        """Every file whose change matters: the config and what the analysis reads."""
        files = {self.config_file} if self.config_file else set()
        if self.inputs is not None:
            files.update(self.inputs.files)
        return {f.resolve() for f in files}

    def reload_config(self) -> bool:
        """Re-read the config (torch-free); True when it is valid. On errors the last good
        config stays, so the diagnostics that came from it are not lost."""
        try:
            config = load_config(self.directory, self.config_file)
        except QuantlensError as exc:
            self.config_problems = list(exc.problems)
            return False
        self.config, self.config_problems = config, []
        self.config_file = config.config_file or self.config_file
        self.inputs = project_inputs(config)
        return True

    def restore(self) -> bool:
        """Statistics and measurements from the cache when its key matches the inputs."""
        if self.cache is None or self.inputs is None:
            return False
        blob = self.cache.load(self.inputs.key)
        if blob is None:
            return False
        try:
            entry = msgpack.unpackb(blob, raw=False)
            if not isinstance(entry, dict) or entry.get("layout") != CACHE_LAYOUT:
                raise ValueError("another cache layout")
            calibration = CalibrationResult.from_msgpack(entry["calibration"])
            measurements = Measurements.from_msgpack(entry["measurements"])
            timings = dict(entry.get("timings", {}))
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            return False  # a foreign or corrupt entry is recomputed, never trusted
        self._take(calibration, measurements, timings, self.inputs.key)
        self.memo.load(entry.get("searches"), calibration)
        return True

    def snapshot(self) -> Snapshot:
        """The findings for the current config: from the measurements when they were taken
        under it, estimated from the statistics otherwise."""
        start = time.perf_counter()
        problems = [*self.config_problems, *self.run_problems]
        if self.config is None or self.calibration is None or self.measurements is None:
            return Snapshot(None, problems, seconds=time.perf_counter() - start)
        result = rediagnose(self.calibration, self.config, self.measurements, memo=self.memo, timings=self.timings)
        problems = [*problems, *result.problems]
        return Snapshot(result, problems, result.estimated, time.perf_counter() - start)

    def needs_run(self) -> bool:
        """True when only a worker can bring the diagnostics up to date."""
        if self.config is None or self.inputs is None:
            return False
        return (self.calibration_key != self.inputs.key or self.measurements is None
                or not self.measurements.current_for(self.config.settings)
                or self.measurements.chosen_under != choice_key(self.config.diagnosis, self.config.ignore))

    def plan(self, *, report_dir: Path | None = None, force: bool = False) -> Plan | None:
        """The worker run that brings this project up to date, or None when none is needed
        (or the same inputs already failed repeatedly: then it waits for a change)."""
        if self.config is None or self.inputs is None:
            return None
        settings_json = self.config.settings.to_json()
        if not force and not self.needs_run():
            return None
        if not force and self.failures.get(self._failure_key(settings_json), 0) >= REPEATED_FAILURES:
            return None
        reuse = self.calibration is not None and self.calibration_key == self.inputs.key
        request: dict[str, Any] = {"directory": str(self.directory),
                                   "config_file": str(self.config_file) if self.config_file else None}
        if reuse:
            assert self.calibration is not None
            request["calibration"] = self.calibration.to_msgpack()
        if report_dir is not None:  # "quantize now": the full run, the sensitivity search included
            request["report_dir"] = str(report_dir)
            request["sensitivity"] = True
        return Plan(request, not reuse, self.inputs, settings_json)

    def accept(self, plan: Plan, outcome: RunOutcome) -> None:
        """Take a finished run in: its results (cached), or its problems."""
        if outcome.cancelled:
            return
        key = self._failure_key(plan.settings_json)
        if not outcome.ok:
            self.run_problems = outcome.problems
            self.failures[key] = self.failures.get(key, 0) + 1
            return
        assert outcome.calibration is not None and outcome.measurements is not None
        self.failures.pop(key, None)
        self.run_problems = []
        calibration = (CalibrationResult.from_msgpack(outcome.calibration) if plan.recalibrate or self.calibration is None
                       else self.calibration)
        measurements = Measurements.from_msgpack(outcome.measurements)
        self._take(calibration, measurements, outcome.timings, plan.inputs.key)
        self.memo.load(outcome.searches, calibration)  # the run's searches: the snapshot makes the same
        self.report = outcome.report or self.report
        if self.cache is not None:
            # the worker's bytes: the calibration it ran on (this one), not encoded again
            entry = {"layout": CACHE_LAYOUT, "calibration": outcome.calibration,
                     "measurements": outcome.measurements, "timings": outcome.timings,
                     "searches": outcome.searches}
            try:
                self.cache.store(plan.inputs.key, msgpack.packb(entry, use_bin_type=True))
            except OSError:
                pass  # a full disk costs the next start a recalibration, nothing else

    def model_location(self) -> Location | None:
        """Where a fault with no better place goes: the config's ``model =`` line."""
        if self.config is not None:
            return self.config.location_of("model")
        return Location(str(self.config_file)) if self.config_file else None

    def _take(self, calibration: CalibrationResult, measurements: Measurements, timings: dict[str, float],
              key: str) -> None:
        if calibration is not self.calibration:
            self.memo = SearchMemo()
        self.calibration, self.measurements, self.timings, self.calibration_key = (
            calibration, measurements, timings, key)

    def _failure_key(self, settings_json: dict[str, Any]) -> tuple[str, str]:
        assert self.inputs is not None
        return self.inputs.key, repr(sorted(settings_json.items()))


def _config_candidates(folder: Path, depth: int = 3) -> list[Path]:
    """quantlens.toml and pyproject.toml files under ``folder``, ``depth`` levels down."""
    out: list[Path] = []
    if depth < 0 or not folder.is_dir():
        return out
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return out
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith((".", "__")) and entry.name not in ("node_modules", "venv"):
            if depth > 0:
                out.extend(_config_candidates(entry, depth - 1))
        elif entry.name in ("quantlens.toml", "pyproject.toml") and entry.parent != folder:
            out.append(entry)
    return out

