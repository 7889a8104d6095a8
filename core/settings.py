"""Quantization settings, with MCT's names and defaults.

One name per concept: the keys users write in ``[tool.quantlens]`` are the field names here,
the names in the JSON result and the names MCT's ``QuantizationConfig`` uses, so a finding
can say "set z_threshold = 9" and mean the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from quantlens.core.thresholds import ErrorMethod

MAX_BITS = 16
"""Widest quantizer simulated; the float-bits histogram is exact up to 8 bits."""


@dataclass(frozen=True)
class PointOverride:
    """Per-point or per-module-type settings: the way to test a suspicion about a layer."""

    activation_n_bits: int | None = None
    weights_n_bits: int | None = None
    quantize: bool = True
    z_threshold: float | None = None
    """This point's outlier removal: ``inf`` exempts it from a model-wide z_threshold."""
    activation_error_method: ErrorMethod | None = None
    """This point's threshold method, e.g. MSE where a model-wide KL or MAE clips it."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: _json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class QuantSettings:
    """How the model is quantized (mirrors MCT's QuantizationConfig where MCT has a name)."""

    activation_n_bits: int = 8
    weights_n_bits: int = 8
    activation_error_method: ErrorMethod = ErrorMethod.MSE
    weights_error_method: ErrorMethod = ErrorMethod.MSE
    l_p_value: float = 2.0
    z_threshold: float = math.inf
    weights_per_channel_threshold: bool = True
    power_of_two_thresholds: bool = True
    shift_negative_activation_correction: bool = False
    weights_bias_correction: bool = True
    """MCT's default: subtract the mean output shift that weight quantization causes."""
    overrides: dict[str, PointOverride] = field(default_factory=dict)
    """Keyed by point name, qualified module name (a parent such as ``"blocks.1"`` covers the
    points inside it) or module type (e.g. ``"Linear"``)."""

    def with_changes(self, **changes: Any) -> QuantSettings:
        return dataclasses.replace(self, **changes)

    def for_point(self, names: list[str], module_types: list[str]) -> PointOverride:
        """The override that applies to a point: the most specific name, then its type."""
        key = self.override_key(names, module_types)
        return self.overrides[key] if key is not None else PointOverride()

    def override_key(self, names: list[str], module_types: list[str]) -> str | None:
        """The overrides entry for a point: its own names, then enclosing modules (innermost
        first), then module types; None when no entry applies."""
        candidates = [*names, *(parent for name in names for parent in _parents(name)), *module_types]
        return next((key for key in candidates if key in self.overrides), None)

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "overrides":
                out[f.name] = {k: v.to_json() for k, v in value.items()}
            else:
                out[f.name] = _json_value(value)
        return out

    @staticmethod
    def from_json(obj: dict[str, Any]) -> QuantSettings:
        """The inverse of :meth:`to_json` (values are checked as a config file's would be)."""
        values = {name: coerce_setting(name, value) for name, value in obj.items() if name != "overrides"}
        overrides = {key: coerce_override({k: v for k, v in entry.items() if v is not None})
                     for key, entry in obj.get("overrides", {}).items()}
        return QuantSettings(**values, overrides=overrides)


SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(QuantSettings))


def _json_value(value: Any) -> Any:
    """A setting as JSON holds it: methods by name, infinity as "inf" (JSON has no inf)."""
    if isinstance(value, ErrorMethod):
        return value.value
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def coerce_setting(name: str, value: Any) -> Any:
    """Check and convert one user value; raises ValueError with a message for the user."""
    if name in ("activation_n_bits", "weights_n_bits"):
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_BITS:
            raise ValueError(f"{name} must be a whole number of bits from 2 to {MAX_BITS}, got {value!r}")
        return value
    if name in ("activation_error_method", "weights_error_method"):
        try:
            return ErrorMethod(str(value).upper())
        except ValueError:
            names = ", ".join(m.value for m in ErrorMethod)
            raise ValueError(f"{name} must be one of {names}, got {value!r}") from None
    if name == "l_p_value":
        number = _number(name, value)
        if not number > 0 or not math.isfinite(number):
            raise ValueError(f"l_p_value must be a positive number, got {value!r}")
        return number
    if name == "z_threshold":
        number = _number(name, value)
        if not number > 0:
            raise ValueError(f"z_threshold must be positive (inf turns outlier removal off), got {value!r}")
        return number
    if name in ("weights_per_channel_threshold", "power_of_two_thresholds", "shift_negative_activation_correction",
                "weights_bias_correction"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    raise ValueError(f"unknown setting {name!r}")


def coerce_override(value: Any) -> PointOverride:
    """An override table, e.g. ``{activation_n_bits = 16}`` or ``{quantize = false}``."""
    if not isinstance(value, dict):
        raise ValueError(f"an override must be a table such as {{activation_n_bits = 16}}, got {value!r}")
    known = {f.name for f in dataclasses.fields(PointOverride)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown override key {unknown[0]!r}; known: {', '.join(sorted(known))}")
    args: dict[str, Any] = {}
    for key, item in value.items():
        if key == "quantize":
            if not isinstance(item, bool):
                raise ValueError(f"quantize must be true or false, got {item!r}")
            args[key] = item
        else:
            args[key] = coerce_setting(key, item)
    return PointOverride(**args)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return math.inf
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, got NaN")
    return number


def _parents(name: str) -> list[str]:
    """``blocks.1.mlp.fc2`` -> ``blocks.1.mlp``, ``blocks.1``, ``blocks``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
