"""The model input as a quantization point, batch shape checks and located forward failures.

Statistics are checked against numpy on the raw batches; shapes and messages on the
batch_shapes fixture (one batch of clips twice as long, folded into extra rows by the model)
and on small projects written to a temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from quantlens.core import histogram
from quantlens.core.config import FuncRef, load_config
from quantlens.core.errors import Location, QuantlensError
from quantlens.core.stats import MAX_SHAPE_MISMATCHES, BatchShapes, CalibrationResult
from quantlens.core.torch_engine.calibrate import calibrate_batches
from quantlens.core.torch_engine.loading import build_model, iterate_batches

MODELS = Path(__file__).resolve().parent / "models"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SHAPES = FIXTURES / "batch_shapes"


def _line(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text in line)


def _at(location: Location | None) -> tuple[str, int] | None:
    """File and line (columns differ between the ways a line is located)."""
    return None if location is None else (str(Path(location.file).resolve()), location.line)


def _raw(batches: list[torch.Tensor]) -> np.ndarray:
    return np.concatenate([b.numpy().ravel() for b in batches]).astype(np.float64)


@pytest.fixture(scope="module")
def shapes_calibration() -> CalibrationResult:
    config = load_config(SHAPES)
    model, sites = build_model(config.model, config.roots)
    batches = iterate_batches(config.data, config.roots, torch.device("cpu"))
    return calibrate_batches(model, batches, config.roots, sites)


def _shapes_batches() -> list[torch.Tensor]:
    config = load_config(SHAPES)
    return [b.args[0] for b in iterate_batches(config.data, config.roots, torch.device("cpu"))]


def test_input_point_statistics_match_numpy(calibration, sample):
    raw = sample.batches()
    values = _raw(raw)
    point = calibration.points[0]
    assert (point.name, point.kind, point.op, point.order) == ("input", "input", "input", 0)
    assert point.modules == [] and point.weight_module is None and point.feeds_output
    s = calibration.stats["input"]
    assert s.count == values.size == 4 * 4 * 3 * 8 * 8
    assert (s.min, s.max) == (values.min(), values.max())
    assert s.sumsq == pytest.approx(np.sum(values**2), rel=1e-7)
    assert s.batches == 4
    idx, counts, _ = histogram.histogram_from_values(values.astype(np.float32))
    assert np.array_equal(s.bins, idx) and np.array_equal(s.counts.sum(0), counts)
    half0 = _raw(raw[0::2])
    assert s.counts[0].sum() == half0.size
    # channels-first image input: per-channel ranges over the 3 colour channels
    per_channel = np.stack([b.numpy() for b in raw])
    np.testing.assert_array_equal(s.channel_min, per_channel.min(axis=(0, 1, 3, 4)))


def test_input_point_feeds_the_first_layers_and_sits_at_the_factory_line(calibration):
    """Without a data function (plain tensors), the input is shown where the factory builds the model."""
    assert calibration.point("stem.0").inputs == ["input"]
    assert all("input" not in p.inputs for p in calibration.points if p.name not in ("stem.0",))
    factory = (MODELS / "sample_net.py").resolve()
    assert _at(calibration.point("input").source) == (str(factory), _line(factory, "model = SampleNet()"))


def test_input_point_is_at_the_data_function_line(shapes_calibration):
    data = (SHAPES / "data.py").resolve()
    assert _at(shapes_calibration.point("input").source) == (str(data), _line(data, "# @data-def"))
    assert shapes_calibration.point("front.0").inputs == ["input"]


def test_clips_of_another_length_keep_the_input_range(shapes_calibration):
    """The input's channel axis (frames, channels-last) changes length at batch 5: its min and
    max must still cover every batch."""
    raw = _shapes_batches()
    values = _raw(raw)
    s = shapes_calibration.stats["input"]
    assert s.count == values.size == 7 * 16 * 16 * 20 + 16 * 16 * 40
    assert (s.min, s.max) == (values.min(), values.max())
    assert s.sumsq == pytest.approx(np.sum(values**2), rel=1e-7)


def test_batch_shapes_record_the_folded_batch(shapes_calibration):
    shapes = shapes_calibration.batch_shapes
    assert shapes.input == [16, 16, 20] and shapes.output == [16, 4]
    assert [(m.batch, m.input, m.output) for m in shapes.mismatches] == [(5, [16, 16, 40], [32, 4])]
    assert (shapes.input_mismatches, shapes.output_mismatches) == (1, 1)
    back = CalibrationResult.from_msgpack(shapes_calibration.to_msgpack())
    assert back.batch_shapes == shapes
    assert back.points[0] == shapes_calibration.points[0]


def test_batch_shapes_stay_bounded():
    shapes = BatchShapes()
    shapes.observe(0, [4, 10], [4, 2])
    for i in range(1, 30):
        shapes.observe(i, [4, 10 + i % 2], [4 + (i % 3 == 0), 2])  # odd: another width; every third: more rows
    assert len(shapes.mismatches) == MAX_SHAPE_MISMATCHES
    assert shapes.input_mismatches == 15 and shapes.output_mismatches == 9
    assert [m.batch for m in shapes.mismatches] == [1, 3, 5, 6, 7, 9, 11, 12]
    assert not shapes.input_differs([8, 10]) and shapes.input_differs([4, 10, 1])  # batch size alone is fine


@pytest.fixture(scope="module")
def shapes_findings() -> list:
    from quantlens.core.torch_engine.pipeline import analyze_project

    return [f for f in analyze_project(load_config(SHAPES)).findings if f.rule == "batch-shape"]


def test_batch_shape_findings_name_the_batch_and_both_shapes(shapes_findings):
    data = (SHAPES / "data.py").resolve()
    config = (SHAPES / "quantlens.toml").resolve()
    assert len(shapes_findings) == 2
    by_kind = {"input" if "input shape" in f.message else "output": f for f in shapes_findings}
    odd_input, odd_output = by_kind["input"], by_kind["output"]
    assert odd_input.message.startswith("batch 5 of the representative dataset has input shape (16, 16, 40) "
                                        "where the first batch has (16, 16, 20)")
    assert odd_output.message.startswith("the model output of batch 5 has 32 rows (shape (32, 4)) for an input "
                                         "of 16 samples (shape (16, 16, 40))")
    for f in shapes_findings:
        assert f.severity.value == "warning"
        assert [_at(loc) for loc in f.locations] == [(str(data), _line(data, "# @data-def"))]
        assert [Path(loc.file).resolve() for loc in f.related] == [config]
        assert f.evidence["batch"] == 5 and f.evidence["batches"] == 1
        assert f.evidence["first_input_shape"] == [16, 16, 20] and f.evidence["first_output_shape"] == [16, 4]


NET = '''import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(16, 8, 3)

    def forward(self, x):
        return self.conv(x)  # @forward


def build():
    return Net()
'''

DATA = '''import torch


def batches():  # @def
    g = torch.Generator().manual_seed(0)
    yield torch.randn(4, 16, 20, generator=g)
    yield torch.randn(4, 16, 20, generator=g)
    yield torch.randn(4, 1, 16, 20, generator=g)  # one rank too many
'''


def test_forward_failure_names_the_batch_its_shape_and_the_data_function(tmp_path):
    (tmp_path / "net.py").write_text(NET, encoding="utf-8")
    (tmp_path / "data.py").write_text(DATA, encoding="utf-8")
    model, sites = build_model(FuncRef(tmp_path / "net.py", "build"), [tmp_path])
    batches = iterate_batches(FuncRef(tmp_path / "data.py", "batches"), [tmp_path], torch.device("cpu"))
    with pytest.raises(QuantlensError) as info:
        calibrate_batches(model, batches, [tmp_path], sites)
    problem = info.value.problems[0]
    assert problem.message.startswith("Net.forward() on batch 2 of shape (4, 1, 16, 20) raised RuntimeError: ")
    assert "conv1d" in problem.message and problem.code == "user-code"
    net, data = (tmp_path / "net.py").resolve(), (tmp_path / "data.py").resolve()
    assert _at(problem.location) == (str(net), _line(net, "# @forward"))
    assert [_at(loc) for loc in problem.related] == [(str(data), _line(data, "# @def"))]
