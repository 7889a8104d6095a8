"""Calibration's recorded forwards: the first batch replayed from the discovery forward into
the collectors, the simulated batches' forwards replayed into the simulation's float pass,
each run again when the forward changed what is read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from quantlens.core import histogram
from quantlens.core.torch_engine import calibrate
from quantlens.core.settings import QuantSettings
from quantlens.core.torch_engine.calibrate import Forwards, calibrate_batches
from quantlens.core.torch_engine.pipeline import measure


class Counted(nn.Module):
    """conv -> BN -> ReLU (one point), then a second conv whose output is scaled in place
    after its hook (``scale_in_place``), as ``out += identity`` does in a residual block."""

    def __init__(self, scale_in_place: bool):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv1d(4, 4, 1)
        self.scale_in_place = scale_in_place
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        y = self.conv2(self.relu(self.bn(self.conv(x))))
        if self.scale_in_place:
            y.mul_(3.0)
        return y.mean(dim=2)


def _model(scale_in_place: bool) -> Counted:
    torch.manual_seed(0)
    model = Counted(scale_in_place)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _batches(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(5, 2, 16, generator=g) for _ in range(n)]


def _raw(model: nn.Module, module: str) -> np.ndarray:
    """A module's outputs over the batches, copied when its hook runs (before any in-place op)."""
    seen: list[np.ndarray] = []
    handle = dict(model.named_modules())[module].register_forward_hook(
        lambda m, a, o: seen.append(o.detach().numpy().copy()))
    with torch.no_grad():
        for b in _batches():
            model(b)
    handle.remove()
    return np.concatenate([s.ravel() for s in seen])


def _assert_matches(stats, raw: np.ndarray) -> None:
    assert stats.count == raw.size
    assert stats.min == raw.min() and stats.max == raw.max()
    idx, counts, _ = histogram.histogram_from_values(raw.astype(np.float32))
    assert np.array_equal(stats.bins, idx) and np.array_equal(stats.counts.sum(0), counts)


def test_the_first_batch_is_replayed_not_run_again():
    model = _model(scale_in_place=False)
    result = calibrate_batches(model, _batches(), [])
    assert model.forwards == 3  # discovery's forward of batch 0 fed the collectors
    _assert_matches(result.stats["conv"], _raw(model, "relu"))  # the in-place ReLU's output
    _assert_matches(result.stats["conv2"], _raw(model, "conv2"))


def test_a_point_output_changed_in_place_later_runs_the_batch_again():
    """conv2's output is scaled after its hook: a replay would read the scaled values."""
    model = _model(scale_in_place=True)
    result = calibrate_batches(model, _batches(), [])
    assert model.forwards == 4
    _assert_matches(result.stats["conv2"], _raw(model, "conv2"))


def test_over_the_byte_budget_the_batch_runs_again_with_the_same_statistics(monkeypatch):
    replayed = calibrate_batches(_model(scale_in_place=False), _batches(), [])
    monkeypatch.setattr(calibrate, "RECORD_BYTES", 0)
    model = _model(scale_in_place=False)
    rerun = calibrate_batches(model, _batches(), [])
    assert model.forwards == 4
    for name, s in replayed.stats.items():
        t = rerun.stats[name]
        assert np.array_equal(s.bins, t.bins) and np.array_equal(s.counts, t.counts), name
        assert np.array_equal(s.sums, t.sums) and s.sumsq == pytest.approx(t.sumsq, rel=1e-12)
        assert np.array_equal(s.channel_min, t.channel_min) and np.array_equal(s.input_min, t.input_min)
        np.testing.assert_array_equal(s.input_channel_mean, t.input_channel_mean)


def _simulated(model: Counted, forwards: Forwards | None):
    """The measurements on 2 of 3 batches, and how many forwards the simulation ran."""
    calibration = calibrate_batches(model, _batches(), [], forwards=forwards)
    before = model.forwards
    measured = measure(model, calibration, _batches, QuantSettings(activation_n_bits=4, weights_n_bits=4), [],
                       simulation_batches=2, forwards=forwards)
    return measured, model.forwards - before


def _assert_same_errors(a, b) -> None:
    assert a.output.error == b.output.error
    for name, m in a.points.items():
        assert m.isolated == b.points[name].isolated and m.cumulative == b.points[name].cumulative, name


def test_the_simulation_replays_the_calibration_forwards_of_its_batches():
    replayed, forwards = _simulated(_model(scale_in_place=False), Forwards(2))
    assert forwards == 2  # the quantized passes only: both float passes were replayed
    run, forwards = _simulated(_model(scale_in_place=False), None)
    assert forwards == 4
    _assert_same_errors(replayed, run)  # the same sums, bit for bit
    assert replayed.points["conv2"].isolated.count == 2 * 5 * 4 * 16


def test_a_recorded_tensor_changed_in_place_later_runs_the_float_pass():
    """conv2's output is scaled after its hook: a replayed float pass would read it scaled."""
    replayed, forwards = _simulated(_model(scale_in_place=True), Forwards(2))
    assert forwards == 4
    run, _ = _simulated(_model(scale_in_place=True), None)
    _assert_same_errors(replayed, run)


def test_recordings_over_the_budget_run_the_float_pass():
    """A budget for one batch's recording: the second simulated batch runs its float pass."""
    probe = Forwards(1)
    calibrate_batches(_model(scale_in_place=False), _batches(), [], forwards=probe)
    one = Forwards(2, budget=probe.recordings[0].bytes)
    replayed, forwards = _simulated(_model(scale_in_place=False), one)
    assert forwards == 3
    run, _ = _simulated(_model(scale_in_place=False), None)
    _assert_same_errors(replayed, run)
