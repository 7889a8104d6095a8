"""Re-simulations reuse the simulation's module calls that end before a variant's first
changed point: the same outputs, bit for bit, as running every module again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from quantlens.core.activations import quantize_activations
from quantlens.core.config import load_config
from quantlens.core.settings import QuantSettings
from quantlens.core.torch_engine import simulate as simulate_module
from quantlens.core.torch_engine.calibrate import calibrate_batches
from quantlens.core.torch_engine.folding import quantize_model_weights
from quantlens.core.torch_engine.pipeline import measure_project
from quantlens.core.torch_engine.simulate import Variant, resimulate, simulate
from torch import nn


class CountedConv(nn.Conv1d):
    """A conv that counts the times its own forward runs (a reused call does not run it)."""

    runs = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountedConv.runs += 1
        return super().forward(x)


class CountedReLU(nn.ReLU):
    runs = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountedReLU.runs += 1
        return super().forward(x)


class Net(nn.Module):
    """front (conv, BN) -> ReLU -> mid (conv, ReLU) -> adds -> head (conv); ``shared``: one
    ReLU module applied after front and after mid; ``in_place``: front's output is scaled in
    place after the ReLU has read it."""

    def __init__(self, shared: bool = False, in_place: bool = False):
        super().__init__()
        self.front = nn.Sequential(CountedConv(2, 6, 3, padding=1), nn.BatchNorm1d(6))
        self.act = CountedReLU()
        self.mid = CountedConv(6, 6, 3, padding=1)
        self.mid_act = self.act if shared else nn.ReLU()
        self.head = CountedConv(6, 3, 1)
        self.in_place = in_place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.front(x)
        h = self.act(f)
        if self.in_place:
            f.mul_(0.5)
        m = self.mid_act(self.mid(h))
        return self.head(m + h + f).mean(dim=2)  # f read after the in-place change


def _setup(model: nn.Module):
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.normal_(p, std=0.4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(4, 2, 32, generator=g) for _ in range(2)]
    calibration = calibrate_batches(model, batches, [])
    settings = QuantSettings(activation_n_bits=4, weights_n_bits=4)
    acts = quantize_activations(calibration, settings)
    weights, _ = quantize_model_weights(model, calibration.points, settings, calibration.stats)
    sim = simulate(model, calibration.points, acts, weights, batches, [], keep_outputs=True)
    return calibration, acts, weights, sim, batches


def _wider(acts, weights, name: str) -> Variant:
    return Variant({**acts, name: dataclasses.replace(acts[name], n_bits=16)}, weights)


def _both(model: Net, changed: list[str]):
    """Each variant (one point at 16 bits) re-simulated with and without the tapes, and how
    many counted convs and ReLUs ran with them."""
    calibration, acts, weights, sim, batches = _setup(model)
    variants = [_wider(acts, weights, name) for name in changed]
    CountedConv.runs = CountedReLU.runs = 0
    reused = resimulate(model, calibration.points, variants, batches, [], reference=sim.outputs,
                        base=(Variant(acts, weights), sim.tapes))
    runs, relu_runs = CountedConv.runs, CountedReLU.runs
    again = resimulate(model, calibration.points, variants, batches, [], reference=sim.outputs)
    assert [o.error for o in reused] == [o.error for o in again]  # bit for bit
    assert CountedConv.runs - runs == 3 * len(variants) * len(batches)
    return runs, relu_runs, {p.name for p in calibration.points}


def test_a_late_change_reuses_everything_before_it():
    runs, _, names = _both(Net(), ["head"])
    assert {"front.0", "mid", "head"} <= names
    assert runs == 2  # head only, on each of the 2 batches: front and mid were reused


def test_a_change_reuses_nothing_it_reaches():
    runs, _, _ = _both(Net(), ["front.0", "mid"])
    assert runs == 2 * (3 + 2)  # front.0 changed: all 3 convs; mid changed: mid and head


def test_the_model_input_changed_reuses_nothing():
    runs, _, _ = _both(Net(), ["input"])
    assert runs == 2 * 3


def test_the_base_run_among_the_variants_records_the_tape_they_reuse():
    """On batches the simulation did not run (no tapes: the settling of a change on every
    batch), the unchanged model runs first and records each batch's module calls; a late
    change then runs only its head, with the same outputs as running every module."""
    model = Net()
    calibration, acts, weights, sim, batches = _setup(model)
    base = Variant(acts, weights)
    runs = [base, _wider(acts, weights, "head")]
    CountedConv.runs = 0
    recorded = resimulate(model, calibration.points, runs, batches, [], base=(base, []))
    assert CountedConv.runs == 2 * (3 + 3 + 1)  # the float forward and the base: every conv; the change: head
    whole = resimulate(model, calibration.points, runs, batches, [])
    assert [o.error for o in recorded] == [o.error for o in whole]  # bit for bit
    assert recorded[0].error == sim.output.error  # the base, as the simulation measured it


def test_a_module_called_twice_runs_both_times():
    """The shared ReLU runs after front and after mid (a skipped first call would shift the
    names of the ops in its second); front and mid, which hold neither call, are reused."""
    runs, relu_runs, _ = _both(Net(shared=True), ["head"])
    assert runs == 2 and relu_runs == 2 * 2
    assert _both(Net(), ["head"])[1] == 0


def test_an_output_changed_in_place_after_it_was_kept_is_not_reused():
    runs, _, _ = _both(Net(in_place=True), ["head"])
    assert runs == 2 * 2  # front's output changed in place: front runs again, mid is reused


CONV_OUTPUT_BYTES = 4 * 6 * 32 * 4
"""One batch's output of front.0 (and of the ReLU, and of mid): float32 (4, 6, 32)."""


@pytest.mark.parametrize(("budget", "expected"), [(0, 2 * 3), (2 * CONV_OUTPUT_BYTES, 2 + 3)])
def test_a_tape_over_its_budget_reuses_only_what_it_kept(monkeypatch, budget, expected):
    """Two outputs' worth: the first batch's tape keeps front and the ReLU (front.0's output is
    front's), not mid; the second batch's keeps nothing."""
    monkeypatch.setattr(simulate_module, "TAPE_BYTES", budget)
    runs, _, _ = _both(Net(), ["head"])
    assert runs == expected


class Encoder(nn.Module):
    """Leaves its output in a list its parent reads later (as some U-Net code keeps skips)."""

    def __init__(self, skips: list[torch.Tensor]):
        super().__init__()
        self.conv = CountedConv(2, 6, 3, padding=1)
        self.skips = skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.skips.append(y)
        return y


class SkipNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.skips: list[torch.Tensor] = []
        self.encoder = Encoder(self.skips)
        self.act = nn.ReLU()
        self.head = CountedConv(6, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.skips.clear()
        h = self.act(self.encoder(x))
        return self.head(h + self.skips.pop()).mean(dim=2)


def test_a_forward_that_needs_a_skipped_modules_side_effect_runs_whole():
    """Reusing the encoder skips its append, and the parent's pop fails: that pass runs
    whole, the tapes go, and the outputs are those of running everything."""
    model = SkipNet()
    calibration, acts, weights, sim, batches = _setup(model)
    assert {"encoder.conv", "head"} <= {p.name for p in calibration.points}
    variants = [_wider(acts, weights, "head")] * 2
    CountedConv.runs = 0
    reused = resimulate(model, calibration.points, variants, batches, [], reference=sim.outputs,
                        base=(Variant(acts, weights), sim.tapes))
    assert CountedConv.runs == 2 * 2 * 2  # both convs, both variants, both batches: nothing reused
    again = resimulate(model, calibration.points, variants, batches, [], reference=sim.outputs)
    assert [o.error for o in reused] == [o.error for o in again]


def test_the_verified_changes_of_a_transformer_are_the_same_with_and_without_tapes(monkeypatch):
    """deit_tiny (attention, residual adds, LayerNorms, GELU): its 6 verified changes measure
    the same, bit for bit, whether the re-simulations reuse the tapes or run everything."""
    config = load_config(Path(__file__).resolve().parents[2] / "fixtures" / "deit_tiny")
    _, reused, _ = measure_project(config)
    monkeypatch.setattr(simulate_module, "TAPE_BYTES", 0)
    _, again, _ = measure_project(config)
    assert len(reused.verified) >= 3
    assert [(v.change, v.error) for v in reused.verified] == [(v.change, v.error) for v in again.verified]
