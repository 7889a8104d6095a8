"""Result payloads written by hand from docs/result-format.md, for tests that need no model.

Builders take what a test varies; every other field holds a plausible value, so the code
under test meets the shape that ``quantlens check --json`` writes (``"inf"`` strings, null
metrics and all).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SETTINGS: dict[str, Any] = {
    "activation_n_bits": 8,
    "weights_n_bits": 8,
    "activation_error_method": "MSE",
    "weights_error_method": "MSE",
    "l_p_value": 2.0,
    "z_threshold": "inf",
    "weights_per_channel_threshold": True,
    "power_of_two_thresholds": True,
    "shift_negative_activation_correction": False,
    "weights_bias_correction": True,
    "overrides": {},
}

Db = float | str | None
"""An SQNR in the result's JSON spelling: a number, "inf"/"-inf", or null for NaN."""


def location(root: Path, file: str, line: int, column: int = 0) -> dict:
    return {"file": str(root / file), "line": line, "column": column}


def errors(sqnr_db: Db) -> dict:
    """``metrics.isolated``/``cumulative`` for a signal of unit power at this SQNR."""
    if sqnr_db is None:
        return {"mse": None, "cosine": None, "sqnr_db": None}
    mse = 10.0 ** (-float(sqnr_db) / 10.0)
    return {"mse": mse, "cosine": 1.0 / math.sqrt(1.0 + mse), "sqnr_db": sqnr_db}


def point(root: Path, name: str, *, line: int, isolated_db: Db, cumulative_db: Db, order: int = 0,
          threshold: float = 4.0, n_bits: int = 8, call_line: int = 0, file: str = "models/net.py") -> dict:
    """A ``Linear`` point created at ``file:line`` and, when ``call_line``, applied there in forward."""
    return {
        "name": name,
        "kind": "module",
        "op": "Linear",
        "modules": [name],
        "module_types": ["Linear"],
        "activation_function": None,
        "source": location(root, file, line),
        "source_stack": [location(root, "models/factory.py", 7)],
        "call_site": location(root, file, call_line) if call_line else None,
        "order": order,
        "activation": {
            "threshold": threshold, "signed": True, "n_bits": n_bits, "error_method": "MSE",
            "z_threshold": "inf", "quantize": True, "min": -3.1, "max": 3.4, "mean": 0.02, "std": 0.9,
            "count": 65536, "negative_fraction": 0.49, "q1": -0.6, "q3": 0.61, "iqr_outlier_fraction": 0.007,
            "kept_fraction": 1.0, "shift": 0.0, "predicted_sqnr_db": 38.5,
            "method_thresholds": {"NOCLIPPING": 4.0, "MSE": threshold},
            "method_sqnr_db": {"NOCLIPPING": 38.5, "MSE": 38.5},
        },
        "weights": None,
        "metrics": {"isolated": errors(isolated_db), "cumulative": errors(cumulative_db), "custom": {}},
    }


def finding(rule: str, severity: str, message: str, *, points: tuple[str, ...] = (),
            locations: tuple[dict, ...] = (), related: tuple[dict, ...] = (),
            evidence: dict | None = None) -> dict:
    """A finding as ``Finding.to_json`` writes it."""
    return {
        "rule": rule,
        "severity": severity,
        "message": message,
        "points": list(points),
        "locations": list(locations),
        "evidence": evidence or {},
        "recommendation": {"explanation": "Keep this point at 16 bits to test it.",
                           "config": {'overrides."fc1"': {"activation_n_bits": 16}}, "mct": None},
        "predicted": None,
        "related": list(related),
    }


def payload(root: Path, points: list[dict], findings: list[dict] | None = None, *,
            output_sqnr_db: Db = 30.0, settings: dict | None = None, problems: list[dict] | None = None) -> dict:
    """A whole ``quantlens.result/1`` document around the given points and findings."""
    return {
        "format": "quantlens.result/1",
        "model": "models/factory.py:build",
        "data": "models/factory.py:batches",
        "config_file": str(root / "quantlens.toml"),
        "settings": settings or SETTINGS,
        "calibration": {"num_batches": 4, "num_samples": 64, "input_signature": "float32[16, 32]"},
        "output": {**errors(output_sqnr_db), "top1_agreement": 0.97, "float_evaluation": {},
                   "quantized_evaluation": {}, "custom": {}},
        "sensitivity": [],
        "points": points,
        "findings": findings or [],
        "problems": problems or [],
        "timings_s": {"load": 0.4, "calibrate": 1.2, "thresholds": 0.1, "simulate": 0.9, "diagnose": 0.01},
    }
