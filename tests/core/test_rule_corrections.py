"""The rule corrections of issue 9, each on a model with the structure that misled the rule.

The scenarios are fixtures/frame_tagger (8 bits), fixtures/frontend_damage (one damaging
front-end layer and a damaged side head), fixtures/side_head (a damaged side head that runs
before the real damage) and fixtures/small_dataset; each test first checks that the trigger
of the old rule is present, then that the corrected rule reads it right.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from quantlens.core.diagnosis import diagnose
from quantlens.core.findings import Finding
from quantlens.core.metrics import ErrorSums
from quantlens.core.result import AnalysisResult, PointResult

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
HERE = Path(__file__).resolve().parent


def _analyze(name: str, sensitivity: bool = False) -> AnalysisResult:
    from quantlens.core.config import load_config
    from quantlens.core.torch_engine.pipeline import analyze_project

    return analyze_project(load_config(FIXTURES / name), sensitivity=sensitivity)


@pytest.fixture(scope="module")
def tagger() -> AnalysisResult:
    return _analyze("frame_tagger")


@pytest.fixture(scope="module")
def frontend() -> AnalysisResult:
    return _analyze("frontend_damage", sensitivity=True)


@pytest.fixture(scope="module")
def side_head() -> AnalysisResult:
    return _analyze("side_head")


@pytest.fixture(scope="module")
def small() -> AnalysisResult:
    return _analyze("small_dataset")


def _found(result: AnalysisResult, rule: str) -> list[Finding]:
    return [f for f in result.findings if f.rule == rule]


def test_discovery_follows_the_data_flow(tagger: AnalysisResult) -> None:
    """Producers, output reach and constant operands, against frame_tagger's forward as written."""
    cal = tagger.calibration
    assert {p.name: p.inputs for p in cal.points} == {
        "input": [],  # the model input, a point as in MCT
        "mul_0": ["input"],  # x * weighting: the model input and a buffer
        "front.0": ["mul_0"],
        "front.2": ["front.0"],  # the BatchNorm after the ReLU: not folded
        "block.0": ["front.2"],
        "add_0": ["front.2", "block.0"],  # h + block(h)
        "aux": ["add_0"],  # through h.transpose(1, 2)
        "head": ["add_0"],
    }
    assert [p.name for p in cal.points if not p.feeds_output] == ["aux"]  # returned after the output
    assert cal.point("mul_0").constant_inputs == [1]  # the buffer
    assert all(p.constant_inputs == [] for p in cal.points if p.name != "mul_0")


class _Products(nn.Module):
    """x * a reshaped buffer, x * a parameter's exp, and x * a second activation."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 6))
        self.gain = nn.Parameter(torch.zeros(1, 6))
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x * self.scale.view(1, -1)
        b = a * self.gain.exp()
        return b * torch.sigmoid(self.fc(b))


def test_constant_operands_are_told_from_activations() -> None:
    from quantlens.core.torch_engine.calibrate import calibrate_batches

    torch.manual_seed(0)
    batches = [torch.randn(4, 6) for _ in range(2)]
    cal = calibrate_batches(_Products().eval(), batches, [HERE])
    assert {p.name: p.constant_inputs for p in cal.points if p.op == "mul"} == {"mul_0": [1], "mul_1": [1], "mul_2": []}


def test_first_divergence_quotes_the_point_read_and_skips_side_heads(side_head: AnalysisResult) -> None:
    aux, add, head = (side_head.point(n) for n in ("aux", "add_0", "head"))
    # the old rule's trigger: aux runs before head and falls far below every earlier point
    assert aux.info.order < head.info.order and aux.cumulative.sqnr_db < 10 < add.cumulative.sqnr_db - 6
    (finding,) = _found(side_head, "first-divergence")
    assert finding.points == ("head",)
    assert finding.evidence["before_point"] == "add_0"
    assert finding.evidence["before_db"] == pytest.approx(add.cumulative.sqnr_db)
    assert finding.evidence["before_db"] > aux.cumulative.sqnr_db + 20  # not the minimum of the earlier points
    assert f"falls from {add.cumulative.sqnr_db:.1f} dB at add_0" in finding.message


def test_inherited_damage_is_not_global(frontend: AnalysisResult) -> None:
    quantized = [p for p in frontend.points if p.activation.quantize]
    degraded = {n for f in _found(frontend, "degraded-layer") for n in f.points}
    # the old rule's trigger: most layers degraded, and keeping the worst point (aux) wide does not help
    assert len(degraded) / len(quantized) > 0.5
    single = next(s for s in frontend.sensitivity if s["k"] == 1)
    assert single["points"] == ["aux"] and single["output_sqnr_db"] - frontend.output.error.sqnr_db < 6
    # ... while all but the two culprits are fine in isolation
    alone = {p.name for p in quantized if p.isolated.sqnr_db < 10}
    assert alone == {"front.0", "aux"}
    assert all(frontend.point(n).isolated.sqnr_db > 30 for n in degraded - alone)
    assert not _found(frontend, "global-degradation")
    (divergence,) = _found(frontend, "first-divergence")
    assert divergence.points == ("front.0",) and divergence.evidence["before_point"] == "mul_0"


def test_accumulated_damage_stays_global() -> None:
    """low_bit: 3 bits everywhere, no point fails alone (isolated 11-19 dB) but every later
    one is degraded by all of them together: accumulation, global although no culprit."""
    result = _analyze("low_bit")
    (finding,) = _found(result, "global-degradation")
    assert finding.evidence["isolated_failed_points"] == []
    assert all(result.point(n).isolated.sqnr_db > 10 for n in finding.points)


def test_few_culprits_do_not_explain_accumulated_noise(frontend: AnalysisResult) -> None:
    """frontend_damage with every other point at 15 dB in isolation: head reads five of them,
    whose noise adds up to 5 x 10^-1.5 = 0.16 (8 dB), under the 10 dB limit -> global."""
    culprits = {"front.0", "aux"}

    def noisy(p: PointResult) -> PointResult:
        if p.name in culprits or p.isolated is None:
            return p
        x = p.isolated.sum_xx
        return dataclasses.replace(p, isolated=ErrorSums(p.isolated.count, x, x, x, x * 10 ** -1.5))

    # a hypothetical model: the re-simulations measured on the real one do not describe it
    result = dataclasses.replace(frontend, points=[noisy(p) for p in frontend.points], verified=[])
    (finding,) = [f for f in diagnose(result) if f.rule == "global-degradation"]
    assert set(finding.evidence["isolated_failed_points"]) == culprits


def test_dataset_size_counts_positions(tagger: AnalysisResult) -> None:
    assert tagger.calibration.num_samples == 32  # fewer than min_samples clips: the old rule fired
    assert tagger.calibration.num_batches == 8
    assert not _found(tagger, "dataset-size")  # 32 clips x 101 frames per channel


def test_dataset_size_never_raises_a_cap_that_does_not_bind(small: AnalysisResult) -> None:
    (finding,) = _found(small, "dataset-size")
    assert small.calibration.num_batches == 2  # all the data function yields: no cap is set
    assert "num_calibration_batches" not in finding.recommendation.config
    assert "yields 2 batches (8 samples)" in finding.recommendation.explanation
    assert finding.evidence["num_samples"] == 8
    assert finding.evidence["values_per_channel"] == 8  # 2 batches x 4 samples of 1 position (an MLP)


def test_dataset_size_raises_a_cap_that_binds(small: AnalysisResult) -> None:
    capped = dataclasses.replace(small, calibration=dataclasses.replace(small.calibration, batch_limit=2))
    (finding,) = [f for f in diagnose(capped) if f.rule == "dataset-size"]
    assert "num_calibration_batches = 2 stopped the data function" in finding.recommendation.explanation
    assert "num_calibration_batches" not in finding.recommendation.config  # how much more it yields is unknown


def test_calibration_records_its_cap() -> None:
    from quantlens.core.torch_engine.calibrate import calibrate_batches

    model = nn.Sequential(nn.Linear(4, 4)).eval()
    cal = calibrate_batches(model, [torch.randn(2, 4)] * 3, [HERE], limit=3)
    assert (cal.batch_limit, cal.num_batches) == (3, 3)
    assert type(cal).from_msgpack(cal.to_msgpack()).batch_limit == 3


def test_product_with_a_buffer_is_no_activation_product(tagger: AnalysisResult) -> None:
    assert tagger.point("mul_0").info.num_inputs == 2  # the old rule's trigger
    assert not _found(tagger, "activation-product")


def test_sparse_sigmoid_output_is_no_iqr_outlier(tagger: AnalysisResult) -> None:
    head = tagger.point("head")
    assert head.info.activation == "sigmoid" and head.activation.iqr_outlier_fraction > 0.05  # the old trigger
    assert not _found(tagger, "outliers-iqr")


def test_sparse_softmax_output_is_no_iqr_outlier() -> None:
    from quantlens.core.settings import QuantSettings
    from quantlens.core.torch_engine.pipeline import analyze_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 10), nn.Softmax(-1)).eval()
    with torch.no_grad():
        model[0].weight.mul_(20)  # confident: one class near 1, the rest near 0
    batches = [torch.randn(16, 8) for _ in range(8)]
    result = analyze_model(model, lambda: batches, QuantSettings(), [HERE])
    probabilities = result.point("1")
    assert probabilities.info.op == "Softmax" and probabilities.activation.iqr_outlier_fraction > 0.05
    assert not [f for f in diagnose(result) if f.rule == "outliers-iqr" and "1" in f.points]


class _TwoHeads(nn.Module):
    """A softmax head and a sigmoid head, concatenated; the softmax scaled by ``scale`` (an op
    that is no point) on its way to the concatenation."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.body = nn.Linear(8, 10)
        self.gate = nn.Linear(8, 4)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(self.body(x) * 20, -1) * self.scale
        return torch.cat((probabilities, torch.sigmoid(self.gate(x) * 20)), -1)


@pytest.mark.parametrize(("scale", "bounded"), [(1.0, True), (3.0, False)])
def test_a_concatenation_of_probabilities_is_bounded_while_its_values_stay_inside(scale: float, bounded: bool) -> None:
    """A concatenation holds its inputs' values: of two probability outputs, it lies in [0, 1]
    and its sparse mass near 0 is no IQR tail (probability_heads' cat_0). A softmax tripled on
    the way (by an op that is no point) leaves [0, 1]: then it is bounded no more."""
    from quantlens.core.config import DiagnosisSettings
    from quantlens.core.diagnosis.context import Context
    from quantlens.core.settings import QuantSettings
    from quantlens.core.torch_engine.pipeline import analyze_model

    torch.manual_seed(0)
    batches = [torch.randn(16, 8) for _ in range(8)]
    result = analyze_model(_TwoHeads(scale).eval(), lambda: batches, QuantSettings(), [HERE])
    cat = result.point("cat_0")
    assert cat.info.inputs == ["softmax_0", "sigmoid_0"]
    assert cat.activation.iqr_outlier_fraction > 0.05  # the old trigger
    assert Context(result, DiagnosisSettings()).natural_range(cat) == ((0.0, 1.0) if bounded else None)
    flagged = [f for f in diagnose(result) if f.rule == "outliers-iqr" and "cat_0" in f.points]
    assert bool(flagged) is not bounded
