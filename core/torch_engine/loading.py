"""Loading the user's model factory, checkpoint and data, with every failure located.

User files are imported by path (never as installed packages), under a private module
name, with their folder and the project root on ``sys.path`` so sibling imports work.
Anything that goes wrong (syntax error, missing function, exception in the factory or in
the data generator, a checkpoint that does not fit) becomes a QuantlensError whose problem
points at the user's line, or at the config key that named the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from quantlens.core.config import FuncRef
from quantlens.core.errors import Location, Problem, QuantlensError, user_code_location
from quantlens.core.torch_engine.sources import ConstructionSites, Workspace, record_construction


@dataclass
class Batch:
    """One model input: positional and keyword arguments for ``model(*args, **kwargs)``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    labels: Any = None

    @property
    def size(self) -> int:
        for t in [*self.args, *self.kwargs.values()]:
            if isinstance(t, torch.Tensor) and t.ndim > 0:
                return int(t.shape[0])
        return 1


def import_file(path: Path, roots: list[Path]) -> ModuleType:
    """Import a user file by path under a private name (``quantlens_user.<stem>_<hash>``)."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"quantlens_user.{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise QuantlensError([Problem(f"cannot import {path}", Location(str(path)), code="load")])
    module = importlib.util.module_from_spec(spec)
    added = [str(p) for p in [path.parent, *roots] if str(p) not in sys.path]
    sys.path[:0] = added
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise QuantlensError([Problem(
            f"syntax error: {exc.msg}", Location(str(Path(exc.filename or path).resolve()), exc.lineno or 0, exc.offset or 0), code="load",
        )]) from None
    except Exception as exc:  # noqa: BLE001 - any error in user code is reported, not raised
        sys.modules.pop(name, None)
        raise user_error(f"importing {path.name} raised", exc, roots, Location(str(path))) from None
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)
    return module


def load_function(ref: FuncRef, roots: list[Path]) -> Callable[..., Any]:
    module = import_file(ref.path, roots)
    fn = getattr(module, ref.function, None)
    if fn is None or not callable(fn):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", "") == module.__name__)
        hint = f"functions in {ref.path.name}: {', '.join(names)}" if names else ""
        raise QuantlensError([Problem(f"{ref.path.name} has no function {ref.function!r}", ref.location, code="load", hint=hint)])
    return fn


def build_model(ref: FuncRef, roots: list[Path], weights: Path | None = None,
                weights_location: Location | None = None) -> tuple[nn.Module, ConstructionSites]:
    """Call the factory (recording construction sites) and load the checkpoint if any."""
    factory = load_function(ref, roots)
    workspace = Workspace(roots)
    with record_construction(workspace) as sites:
        try:
            model = factory()
        except Exception as exc:  # noqa: BLE001
            raise user_error(f"model factory {ref.function}() raised", exc, roots, ref.location) from None
    if not isinstance(model, nn.Module):
        raise QuantlensError([Problem(
            f"model factory {ref.function}() returned {type(model).__name__}, not a torch.nn.Module", ref.location, code="load",
        )])
    if weights is not None:
        load_checkpoint(model, weights, weights_location)
    model.eval()
    return model, sites


def load_checkpoint(model: nn.Module, path: Path, location: Location | None) -> None:
    """``torch.load(weights_only=True)``: a checkpoint can never run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise QuantlensError([Problem(f"cannot load checkpoint {path.name}: {_first_line(exc)}", location, code="load",
                                      hint="checkpoints are loaded with torch.load(weights_only=True): save a state_dict of tensors")]) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise QuantlensError([Problem(f"checkpoint {path.name} holds a {type(state).__name__}, not a state_dict", location, code="load")])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise QuantlensError([Problem(f"checkpoint {path.name} does not fit the model: {_summarise_state_error(str(exc))}", location, code="load")]) from None


def iterate_batches(ref: FuncRef, roots: list[Path], device: torch.device, limit: int | None = None,
                    with_labels: bool = False) -> Iterator[Batch]:
    """Call the data function and yield checked batches on ``device``."""
    fn = load_function(ref, roots)
    try:
        source = fn()
        iterator = iter(source)
    except Exception as exc:  # noqa: BLE001
        raise user_error(f"data function {ref.function}() raised", exc, roots, ref.location) from None
    count = 0
    while limit is None or count < limit:
        try:
            item = next(iterator)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001
            raise user_error(f"data function {ref.function}() raised while producing batch {count}", exc, roots, ref.location) from None
        yield to_batch(item, device, with_labels, ref.location, count)
        count += 1
    if count == 0:
        raise QuantlensError([Problem(f"data function {ref.function}() produced no batches", ref.location, code="data",
                                      hint="the representative dataset must yield at least one batch")])


def to_batch(item: Any, device: torch.device, with_labels: bool, location: Location | None, index: int) -> Batch:
    """Normalise one yielded item: a tensor, a tuple/list of tensors or a dict of them."""
    labels = None
    if with_labels:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise QuantlensError([Problem(f"validation batch {index} must be an (inputs, labels) pair, got {type(item).__name__}", location, code="data")])
        item, labels = item
        labels = _tensor(labels, device, location, index, check_finite=False)
    if isinstance(item, dict):
        batch = Batch((), {k: _tensor(v, device, location, index) for k, v in item.items()}, labels)
    elif isinstance(item, (tuple, list)):
        batch = Batch(tuple(_tensor(v, device, location, index) for v in item), {}, labels)
    else:
        batch = Batch((_tensor(item, device, location, index),), {}, labels)
    if not any(isinstance(v, torch.Tensor) for v in (*batch.args, *batch.kwargs.values())):
        raise QuantlensError([Problem(f"batch {index} holds a {type(item).__name__} and no tensor", location, code="data",
                                      hint="yield a tensor, a tuple of tensors or a dict of tensors per batch")])
    return batch


def _tensor(value: Any, device: torch.device, location: Location | None, index: int, check_finite: bool = True) -> Any:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        if isinstance(value, (int, float, bool, str)) or value is None:
            return value
        raise QuantlensError([Problem(f"batch {index} holds a {type(value).__name__}; expected tensors or numpy arrays", location, code="data")])
    if value.numel() == 0:
        raise QuantlensError([Problem(f"batch {index} holds an empty tensor of shape {tuple(value.shape)}", location, code="data")])
    if check_finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise QuantlensError([Problem(f"batch {index} contains {bad} NaN/Inf input value(s)", location, code="data",
                                      hint="fix the data pipeline; quantization statistics need finite inputs")])
    return value.to(device)


def user_error(what: str, exc: BaseException, roots: list[Path], fallback: Location | None) -> QuantlensError:
    where = user_code_location(exc, roots) or fallback
    return QuantlensError([Problem(f"{what} {type(exc).__name__}: {_first_line(exc)}", where, code="user-code")])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _summarise_state_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[1:4]) if len(lines) > 1 else text

