"""A recommended config change as a value: applied to the settings, compared with them, named.

A recommendation's ``config`` is what the user would write in ``[tool.quantlens]``: setting
names (``z_threshold = 9``) and override tables under dotted keys
(``overrides."fc2" = {activation_n_bits = 16}``). Verification re-simulates the settings
such a change gives, and a change the settings already hold is never recommended again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from typing import Any

from quantlens.core.settings import SETTING_NAMES, PointOverride, QuantSettings, coerce_override, coerce_setting
from quantlens.core.stats import PointInfo

Change = dict[str, Any]
"""A recommendation's config: ``{"z_threshold": 9}``, ``{'overrides."fc2"': {...}}``."""

_OVERRIDES = "overrides."


def override_name(key: str) -> str | None:
    """``overrides."blocks.1.fc2"`` (or ``overrides.fc2``) -> ``blocks.1.fc2``; None for other keys."""
    if not key.startswith(_OVERRIDES):
        return None
    name = key[len(_OVERRIDES):]
    return name[1:-1] if len(name) >= 2 and name[0] == name[-1] == '"' else name


def apply_change(settings: QuantSettings, change: Change) -> QuantSettings | None:
    """``settings`` with ``change`` applied (an override's fields merged into the point's own
    entry); None when the change is empty or touches something a re-simulation cannot test
    (the data, the diagnosis thresholds) or is not a valid value."""
    if not change:
        return None
    values: dict[str, Any] = {}
    overrides = dict(settings.overrides)
    try:
        for key, value in change.items():
            name = override_name(key)
            if name is not None:
                current = overrides.get(name, PointOverride()).to_json()
                merged = {k: v for k, v in {**current, **value}.items() if v is not None}
                overrides[name] = coerce_override(merged)
            elif key in SETTING_NAMES and key != "overrides":
                values[key] = coerce_setting(key, value)
            else:
                return None
    except (ValueError, TypeError, AttributeError):
        return None
    return dataclasses.replace(settings, **values, overrides=overrides)


def already_applied(settings: QuantSettings, change: Change, points: Iterable[PointInfo]) -> bool:
    """True when ``settings`` already give what ``change`` asks for: every setting has the
    value, and every point an override names is already quantized so (whichever entry, the
    point's own, an enclosing module's or its type's, says it)."""
    if not change:
        return False
    by_name = {p.name: p for p in points}
    for key, value in change.items():
        name = override_name(key)
        if name is None:
            if key not in SETTING_NAMES:
                return False
            try:
                if getattr(settings, key) != coerce_setting(key, value):
                    return False
            except ValueError:
                return False
            continue
        point = by_name.get(name)
        current = (settings.for_point([point.name, *point.modules], point.module_types) if point is not None
                   else settings.overrides.get(name, PointOverride()))
        wanted = value if isinstance(value, dict) else {}
        for field_name, field_value in wanted.items():
            if field_value is not None and getattr(current, field_name, None) != field_value:
                return False
    return True


def change_key(change: Change) -> str:
    """A canonical text for a change, so equal changes from different rules are one."""
    return json.dumps(change, sort_keys=True, default=str)


def describe(change: Change) -> str:
    """The change in the config's own words: ``z_threshold = 9``, ``fc2 at 16 bits``,
    ``body, head with z_threshold = inf`` (points given the same fields are named together)."""
    parts = [f"{key} = {_value(value)}" for key, value in change.items() if override_name(key) is None]
    groups: dict[str, list[str]] = {}
    for key, value in change.items():
        name = override_name(key)
        if name is not None:
            groups.setdefault(_fields(value if isinstance(value, dict) else {}), []).append(name)
    parts += [f"{', '.join(names)} {what}" for what, names in groups.items()]
    return "; ".join(parts)


def _fields(fields: dict[str, Any]) -> str:
    bits = {fields.get("activation_n_bits"), fields.get("weights_n_bits")} - {None}
    if fields.get("quantize") is False:
        return "unquantized"
    if len(bits) == 1 and set(fields) <= {"activation_n_bits", "weights_n_bits"}:
        return f"at {bits.pop()} bits"
    return "with " + ", ".join(f"{k} = {_value(v)}" for k, v in fields.items())


def _value(value: Any) -> str:
    """A value as the TOML config spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, str):
        return json.dumps(value)
    return f"{value:g}" if isinstance(value, float) else str(value)
