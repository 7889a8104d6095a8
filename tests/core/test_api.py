"""The Python API gives what the CLI gives: the same points on the same lines, the same
findings, and user-code faults as located problems."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from quantlens.core import QuantlensError, analyze, calibrate
from quantlens.core.result import AnalysisResult
from tests.analyses import fixture_analysis

DEIT = Path(__file__).resolve().parents[2] / "fixtures" / "deit_tiny"


def _import(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def deit() -> tuple[AnalysisResult, ModuleType, ModuleType]:
    """The CLI's analysis of the fixture, and its model and data files imported by path."""
    cli = fixture_analysis("deit_tiny")
    return cli, _import(DEIT / "model.py", "api_deit_model"), _import(DEIT / "data.py", "api_deit_data")


def _findings(result: AnalysisResult) -> list[tuple]:
    """What a user reads: rule, points, message, and the line each finding is shown on (the
    CLI adds the config line as a further location of data findings; the API has none)."""
    return [(f.rule, tuple(f.points), f.message, f.locations[0].file, f.locations[0].line) for f in result.findings]


def test_analyze_with_a_factory_gives_the_clis_findings(deit) -> None:
    cli, model, data = deit
    api = analyze(model.build_model, data.calibration_batches)
    assert len(cli.findings) > 5
    assert _findings(api) == _findings(cli)
    assert [(p.name, p.info.source) for p in api.points] == [(p.name, p.info.source) for p in cli.points]
    def_line = next(i for i, line in enumerate((DEIT / "data.py").read_text().splitlines(), 1)
                    if line.startswith("def calibration_batches("))
    assert api.data_source == cli.data_source and api.data_source.line == def_line


def test_calibrate_with_a_factory_records_the_constructor_lines(deit) -> None:
    cli, model, data = deit
    stats = calibrate(model.build_model, data.calibration_batches)
    assert [(p.name, p.source) for p in stats.points] == [(p.name, p.source) for p in cli.calibration.points]
    assert stats.num_batches == cli.calibration.num_batches == 8
    for name, expected in cli.calibration.stats.items():
        got = stats.stats[name]
        assert (got.count, got.min, got.max) == (expected.count, expected.min, expected.max), name
        assert np.array_equal(got.counts, expected.counts), name


TINY = '''import sys

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)  # @construct

    def forward(self, x):
        return self.fc(x)  # @call


def build():
    torch.manual_seed(0)
    return Tiny()


def build_with(width):
    return Tiny()


def batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 4, generator=g) for _ in range(2)]


def exits():
    sys.exit(3)  # @exit
'''


def _line(marker: str) -> int:
    return _line_of(f"# @{marker}")


def _line_of(text: str) -> int:
    return next(i for i, line in enumerate(TINY.splitlines(), 1) if text in line)


@pytest.fixture()
def tiny(tmp_path: Path) -> tuple[ModuleType, Path]:
    path = tmp_path / "tiny.py"
    path.write_text(TINY)
    return _import(path, f"api_tiny_{abs(hash(tmp_path))}"), path.resolve()


def test_a_factory_puts_points_on_constructor_lines_a_module_on_forward_lines(tiny) -> None:
    module, path = tiny
    from_factory = analyze(module.build, module.batches)
    from_module = analyze(module.build(), module.batches)
    assert from_factory.point("fc").info.source.line == _line("construct")
    assert from_module.point("fc").info.source.line == _line("call")
    assert from_factory.point("fc").info.source.file == from_module.point("fc").info.source.file == str(path)
    # both are diagnosed: 16 samples is a dataset-size warning, shown on the data function's def line
    for result in (from_factory, from_module):
        sizes = [f for f in result.findings if f.rule == "dataset-size"]
        assert [(loc.file, loc.line) for f in sizes for loc in f.locations] == [(str(path), _line_of("def batches():"))]


def test_faults_in_user_code_raise_located_problems(tiny) -> None:
    module, path = tiny
    with pytest.raises(QuantlensError) as info:
        analyze(module.build_with, module.batches)
    [problem] = info.value.problems
    assert problem.message == "model factory build_with() needs arguments (width); it must be callable with none"
    assert (problem.location.file, problem.location.line) == (str(path), _line_of("def build_with(width):"))

    with pytest.raises(QuantlensError) as info:
        calibrate(module.build, module.exits)
    [problem] = info.value.problems
    assert problem.message == "data function exits() called sys.exit(3)" and problem.code == "user-code"
    assert (problem.location.file, problem.location.line) == (str(path), _line("exit"))

    with pytest.raises(QuantlensError) as info:
        analyze(module.build(), [torch.ones(2, 4), "text"])
    [problem] = info.value.problems
    assert problem.message == "calibration data: batch 1 holds a str and no tensor"


def test_validation_data_goes_through_the_same_checks(tiny) -> None:
    module, _ = tiny
    model = module.build()
    inputs = module.batches()
    with torch.no_grad():
        labelled = [(x, model(x).argmax(1)) for x in inputs]
    result = analyze(model, inputs, validation=lambda: labelled)
    assert result.output.float_eval["accuracy"] == 1.0  # the labels are the float model's own predictions
    assert result.validation is not None and result.validation.num_samples == 16
    with pytest.raises(QuantlensError) as info:
        analyze(model, inputs, validation=inputs)  # no labels
    [problem] = info.value.problems
    assert problem.message == "validation data: validation batch 0 must be an (inputs, labels) pair, got Tensor"
