"""What only a forward pass can tell, and the settings it was taken under.

The worker (which owns torch and the model) measures; the language server re-diagnoses from
these numbers and the cached statistics without a forward pass. Measurements carry the
settings they were taken under, because errors measured under other thresholds are stale:
judging with them as if they were current flags the wrong layers
(:func:`quantlens.core.rediagnose.rediagnose` estimates instead).

Everything round-trips through msgpack (never pickle), floats exactly, so a server that
re-diagnoses the worker's measurements settles on the findings a fresh run gives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import msgpack

from quantlens.core.diagnosis.settings import DiagnosisSettings
from quantlens.core.metrics import ErrorSums
from quantlens.core.settings import QuantSettings
from quantlens.core.stats import CalibrationResult, decode, encode
from quantlens.core.weights import WeightReport

FORMAT_VERSION = 4
"""Bumped whenever the serialized layout changes; older caches are then recomputed."""

WEIGHT_SETTINGS = ("weights_n_bits", "weights_error_method", "weights_per_channel_threshold", "l_p_value",
                   "power_of_two_thresholds", "weights_bias_correction")
"""The settings that weight reports depend on (with the overrides' weight bits)."""


@dataclass
class PointMeasurement:
    """One point's float-vs-quantized error sums: its own quantization alone, and everything upstream."""

    isolated: ErrorSums | None = None
    cumulative: ErrorSums | None = None
    custom: dict[str, float] = field(default_factory=dict)


@dataclass
class OutputMetrics:
    """The model's output, float against fully quantized."""

    error: ErrorSums = field(default_factory=ErrorSums)
    top1_agreement: float | None = None
    float_eval: dict[str, float] = field(default_factory=dict)
    quant_eval: dict[str, float] = field(default_factory=dict)
    custom: dict[str, float] = field(default_factory=dict)
    batches: list[ErrorSums] = field(default_factory=list)
    """``error`` split by simulated batch, in order: how far the batches agree."""

    def to_json(self) -> dict:
        return {
            **self.error.to_json(),
            "sqnr_db_by_batch": [b.sqnr_db for b in self.batches],
            "top1_agreement": self.top1_agreement,
            "float_evaluation": self.float_eval,
            "quantized_evaluation": self.quant_eval,
            "custom": self.custom,
        }


@dataclass
class Verification:
    """A recommended change, re-simulated: the model output with the change applied."""

    change: dict[str, Any]
    """The recommendation's config (see :mod:`quantlens.core.changes`)."""
    error: ErrorSums
    top1_agreement: float | None = None
    custom: dict[str, float] = field(default_factory=dict)
    batches: list[ErrorSums] = field(default_factory=list)
    """``error`` split by batch, on the batches of :attr:`OutputMetrics.batches` (or of
    ``reference``'s)."""
    reference: OutputMetrics | None = None
    """The unchanged model's output on this verification's batches when they are not the
    simulation's: a change whose simulated batches disagreed about it, measured again on every
    calibration batch. None: compare with the simulation's output."""

    def against(self, output: OutputMetrics) -> OutputMetrics:
        """What this change is compared with: :attr:`reference` when it was measured on its
        own batches, else the simulation's ``output``."""
        return self.reference if self.reference is not None else output

    def gain_db(self, output: OutputMetrics) -> float:
        """The change's gain in output SQNR, on the batches it was measured on."""
        return self.error.sqnr_db - self.against(output).error.sqnr_db


@dataclass
class Measurements:
    settings: QuantSettings
    """The settings the simulation ran under."""
    points: dict[str, PointMeasurement] = field(default_factory=dict)
    output: OutputMetrics = field(default_factory=OutputMetrics)
    weights: dict[str, WeightReport] = field(default_factory=dict)
    """Per point with weights, under ``settings``' weight settings."""
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    """Re-simulations with the k most sensitive points at 16 bits: k, points, output SQNR."""
    validation: CalibrationResult | None = None
    """Statistics of the validation inputs at the same points (when validation is configured)."""
    verified: list[Verification] | None = None
    """The recommended changes re-simulated under ``settings``, each against the same batches;
    None until the verification has run (the diagnosis that chooses them runs before it)."""
    simulation_batches: int = 0
    """How many batches the errors (and the verifications) were measured on."""
    chosen_under: str = ""
    """:func:`choice_key` of the diagnosis settings the verified changes were chosen under: the
    findings, and so the changes worth verifying, depend on them."""

    def current_for(self, settings: QuantSettings) -> bool:
        """True when the errors were measured under exactly ``settings``."""
        return self.settings == settings

    def weights_current_for(self, settings: QuantSettings) -> bool:
        """True when the weight reports hold for ``settings`` (only weight settings matter)."""
        return weight_key(self.settings) == weight_key(settings)

    def to_msgpack(self) -> bytes:
        return msgpack.packb({
            "version": FORMAT_VERSION,
            "settings": self.settings.to_json(),
            "points": {k: encode(v) for k, v in self.points.items()},
            "output": encode(self.output),
            "weights": {k: encode(v) for k, v in self.weights.items()},
            "sensitivity": self.sensitivity,
            "validation": self.validation.to_msgpack() if self.validation is not None else None,
            "verified": None if self.verified is None else [encode(v) for v in self.verified],
            "simulation_batches": self.simulation_batches,
            "chosen_under": self.chosen_under,
        }, use_bin_type=True)

    @staticmethod
    def from_msgpack(data: bytes) -> Measurements:
        """Raises ValueError on anything that is not this format (a cache loader discards it)."""
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if not isinstance(obj, dict) or obj.get("version") != FORMAT_VERSION:
                raise ValueError("not a quantlens measurements record of this version")
            return Measurements(
                settings=QuantSettings.from_json(obj["settings"]),
                points={k: _point(decode(v)) for k, v in obj["points"].items()},
                output=_output(decode(obj["output"])),
                weights={k: _weight_report(decode(v)) for k, v in obj["weights"].items()},
                sensitivity=list(obj["sensitivity"]),
                validation=CalibrationResult.from_msgpack(obj["validation"]) if obj["validation"] else None,
                verified=None if obj["verified"] is None else [_verification(decode(v)) for v in obj["verified"]],
                simulation_batches=int(obj["simulation_batches"]),
                chosen_under=str(obj["chosen_under"]),
            )
        except (KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
            raise ValueError(f"corrupt measurements record: {type(exc).__name__}: {exc}") from None


def weight_key(settings: QuantSettings) -> tuple:
    overrides = tuple(sorted((k, v.weights_n_bits, v.quantize) for k, v in settings.overrides.items()))
    return (*(getattr(settings, name) for name in WEIGHT_SETTINGS), overrides)


def choice_key(diagnosis: DiagnosisSettings, ignore: tuple[str, ...]) -> str:
    """What the choice of changes to verify depends on besides the quantization settings: the
    diagnosis settings and the config's suppressions (a source comment's are in the model's
    files, whose edits rerun everything). Another key means the verification must run again."""
    record = {"diagnosis": dataclasses.asdict(diagnosis), "ignore": sorted(ignore)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _point(obj: dict) -> PointMeasurement:
    return PointMeasurement(
        isolated=ErrorSums(**obj["isolated"]) if obj["isolated"] else None,
        cumulative=ErrorSums(**obj["cumulative"]) if obj["cumulative"] else None,
        custom=dict(obj["custom"]),
    )


def _output(obj: dict) -> OutputMetrics:
    return OutputMetrics(**{**obj, "error": ErrorSums(**obj["error"]), "batches": [ErrorSums(**b) for b in obj["batches"]]})


def _verification(obj: dict) -> Verification:
    return Verification(dict(obj["change"]), ErrorSums(**obj["error"]), obj["top1_agreement"], dict(obj["custom"]),
                        [ErrorSums(**b) for b in obj["batches"]],
                        _output(obj["reference"]) if obj["reference"] is not None else None)


def _weight_report(obj: dict) -> WeightReport:
    names = {f.name for f in dataclasses.fields(WeightReport)}
    return WeightReport(**{**{k: v for k, v in obj.items() if k in names}, "shape": tuple(obj["shape"])})
