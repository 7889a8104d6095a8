"""Simulation against direct computations: BN folding, isolated error, predicted SQNR."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from quantlens.core.settings import PointOverride, QuantSettings
from quantlens.core.torch_engine.folding import folded_parameters
from quantlens.core.torch_engine.pipeline import analyze_model

MODELS = Path(__file__).resolve().parent / "models"


def _fq(x: np.ndarray, t, n_bits: int, signed: bool) -> np.ndarray:
    """MCT's quantizer written out again (independent of quantlens.core.quantizer)."""
    levels = 2.0 ** (n_bits - 1) if signed else 2.0**n_bits
    step = np.asarray(t, dtype=np.float64) / levels
    lo = -levels if signed else 0
    return np.clip(np.round(x / step), lo, levels - 1) * step


def _sqnr(x: np.ndarray, q: np.ndarray) -> float:
    return 20 * math.log10(np.linalg.norm(x) / np.linalg.norm(x - q))


def test_bn_folding_reproduces_conv_then_bn(built):
    model, _ = built
    conv, bn = model.stem[0], model.stem[1]
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    w, b = folded_parameters(conv, bn)
    with torch.no_grad():
        expected = bn(conv(x))
        got = torch.nn.functional.conv2d(x, w, b, padding=1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_isolated_sqnr_of_a_point_without_weights_equals_the_histogram_prediction(analysis):
    """Two independent computations: torch fake-quant on the data vs prefix sums on the histogram.

    The histogram side is exact; torch fake-quantizes and sums the error in float32, so the two
    agree to ~2e-4 of the noise power (measured up to 9e-4 dB)."""
    for name in ("cat_0", "blocks.0.add_0", "encoder.add_1"):
        p = analysis.point(name)
        assert p.isolated.sqnr_db == pytest.approx(p.activation.predicted_sqnr_db, abs=1e-3)


def test_first_point_cumulative_equals_isolated(analysis):
    first = analysis.points[0]
    assert first.cumulative.sqnr_db == pytest.approx(first.isolated.sqnr_db, abs=1e-9)


def test_isolated_error_of_a_linear_layer_by_hand(built, sample, analysis):
    """fc: per-channel quantized weights, bias correction, output fake-quant, SQNR in numpy."""
    model, _ = built
    xs, ys = [], []
    h1 = model.fc.register_forward_pre_hook(lambda m, a: xs.append(a[0].detach().numpy().astype(np.float64)))
    h2 = model.fc.register_forward_hook(lambda m, a, o: ys.append(o.detach().numpy().astype(np.float64)))
    with torch.no_grad():
        for b in sample.batches():
            model(b)
    h1.remove()
    h2.remove()
    x, y = np.concatenate(xs), np.concatenate(ys)
    w = model.fc.weight.detach().numpy().astype(np.float64)
    bias = model.fc.bias.detach().numpy().astype(np.float64)
    report = analysis.point("fc").weights
    # the per-channel thresholds are the brute-force MSE optimum over power-of-two candidates
    for row, t in zip(w, report.thresholds):
        k = math.ceil(math.log2(np.abs(row).max()))
        cands = 2.0 ** np.arange(k, k - 17, -1)
        errs = [np.mean((_fq(row, c, 8, True) - row) ** 2) for c in cands]
        assert t == cands[int(np.argmin(errs))]
    wq = _fq(w, report.thresholds[:, None], 8, True)
    shift = (wq - w) @ x.mean(axis=0)
    np.testing.assert_allclose(report.bias_shift, shift, rtol=1e-4, atol=1e-9)
    act = analysis.point("fc").activation
    y_iso = _fq(x @ wq.T + (bias - shift), act.threshold, act.n_bits, act.signed)
    assert analysis.point("fc").isolated.sqnr_db == pytest.approx(_sqnr(y, y_iso), abs=1e-3)
    assert report.sqnr_db == pytest.approx(_sqnr(w, wq), abs=1e-9)


def test_wider_bits_reduce_error_and_float_points_are_exact(built, sample):
    model, sites = built
    narrow = analyze_model(model, lambda: sample.batches(2), QuantSettings(activation_n_bits=6, weights_n_bits=6),
                           [MODELS], sites=sites, simulation_batches=None)
    wide = analyze_model(model, lambda: sample.batches(2), QuantSettings(activation_n_bits=12, weights_n_bits=12),
                         [MODELS], sites=sites, simulation_batches=None)
    assert wide.output.error.sqnr_db > narrow.output.error.sqnr_db + 20
    everything_float = QuantSettings(overrides={p.name: PointOverride(quantize=False) for p in wide.points})
    exact = analyze_model(model, lambda: sample.batches(2), everything_float, [MODELS], sites=sites, simulation_batches=None)
    assert exact.output.error.sum_ee == pytest.approx(0.0, abs=1e-8)
    assert exact.output.top1_agreement == 1.0


def test_validation_accuracy_of_float_and_quantized(built, sample):
    model, sites = built
    from quantlens.core.torch_engine.loading import to_batch

    with torch.no_grad():
        labelled = [(b, model(b).argmax(1)) for b in sample.batches(2, seed=7)]
    result = analyze_model(
        model, lambda: sample.batches(2), QuantSettings(), [MODELS], sites=sites, simulation_batches=None,
        validation=lambda: [to_batch(item, torch.device("cpu"), True, None, i) for i, item in enumerate(labelled)],
    )
    assert result.output.float_eval["accuracy"] == 1.0  # labels are the float model's own predictions
    assert 0.0 <= result.output.quant_eval["accuracy"] <= 1.0
    assert result.validation is not None and result.validation.num_samples == 8


def test_sensitivity_resimulation_gains(analysis):
    entries = {e["k"]: e for e in analysis.sensitivity}
    worst = min(analysis.points, key=lambda p: p.isolated.sqnr_db)
    assert entries[1]["points"] == [worst.name]
    assert entries[3]["output_sqnr_db"] >= analysis.output.error.sqnr_db - 0.5


class _ConvBnConv(torch.nn.Module):
    """A linear bottleneck: Conv+BN with no activation, then another conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.bn(self.conv(x)))


def test_conv_bn_without_activation_is_quantized_in_the_quantized_pass() -> None:
    """Regression: a folded BN ending a point used to skip its fake quantization."""
    from quantlens.core import analyze

    torch.manual_seed(0)
    model = _ConvBnConv()
    model.bn.running_var.fill_(2.0)
    model.bn.running_mean.fill_(0.1)
    model.eval()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(3)]
    # the model input unquantized: then the first point's cumulative error is its own
    result = analyze(model, batches, QuantSettings(activation_n_bits=4, overrides={"input": PointOverride(quantize=False)}))
    conv, conv2 = result.point("conv"), result.point("conv2")
    assert conv.info.op == "Conv2d+BatchNorm2d"
    assert conv.cumulative is not None
    assert conv.cumulative.sqnr_db == pytest.approx(conv.isolated.sqnr_db, abs=1e-6)
    # conv2 inherits conv's error: its cumulative SQNR is below its own isolated one
    assert conv2.cumulative.sqnr_db < conv2.isolated.sqnr_db - 1.0


def test_verification_reruns_the_simulated_batches_not_a_new_read(built, sample):
    """The data function is read once: the simulation runs on calibration's first batches,
    and the verification and the sensitivity search re-simulate those same batches. Each read
    here draws new batches, so a second read would compare quantized outputs of new batches
    with the float outputs of the simulated ones. A change measured again on every batch (its
    simulated batches could not settle it) runs on calibration's kept batches after them."""
    model, sites = built
    reads: list[int] = []

    def batches():
        reads.append(1)
        return sample.batches(3, seed=len(reads))

    result = analyze_model(model, batches, QuantSettings(activation_n_bits=5, weights_n_bits=5), [MODELS], sites=sites,
                           sensitivity=True)
    settled = [v for v in result.verified if v.reference is not None]
    assert len(reads) == 1
    assert result.verified and result.sensitivity  # both re-simulated, from the kept batches
    assert settled
    for v in settled:  # the simulated batches' outputs, joined by those of the third
        assert v.reference.batches[:2] == result.output.batches and len(v.batches) == 3
