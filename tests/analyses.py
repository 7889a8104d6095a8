"""Fixture analyses shared by every test module of one pytest process.

Several suites read the same fixture's analysis (diagnostics, hovers, the API, the
re-diagnosis); each one costs a calibration and a simulation, so they are computed once.
The results are treated as read-only by the tests.
"""

from __future__ import annotations

import functools
from pathlib import Path

from quantlens.core.config import ProjectConfig, load_config
from quantlens.core.measurements import Measurements
from quantlens.core.rediagnose import rediagnose
from quantlens.core.result import AnalysisResult
from quantlens.core.stats import CalibrationResult

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@functools.cache
def measured(name: str) -> tuple[ProjectConfig, CalibrationResult, Measurements]:
    """The fixture's config, calibration and measurements (one torch run per process)."""
    from quantlens.core.torch_engine.pipeline import measure_project

    config = load_config(FIXTURES / name)
    calibration, measurements, _ = measure_project(config)
    return config, calibration, measurements


@functools.cache
def fixture_analysis(name: str) -> AnalysisResult:
    """What ``quantlens check fixtures/<name>`` reports (analyze_project is measure + rediagnose)."""
    config, calibration, measurements = measured(name)
    return rediagnose(calibration, config, measurements)
