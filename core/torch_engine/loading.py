"""Loading the user's model factory, checkpoint and data, with every failure located.

User files are imported by path (never as installed packages), under a private module
name, with their folder and the project root on ``sys.path`` so sibling imports work.
Anything that goes wrong (syntax error, missing function, an exception or ``sys.exit`` in
the factory or in the data generator, a checkpoint that does not fit) becomes a
QuantlensError whose problem points at the user's line, or at the config key that named
the file with the function's ``def`` line related. ``SystemExit`` is caught wherever user
code runs (it is a BaseException, and would otherwise end the check silently);
``KeyboardInterrupt`` is not.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from quantlens.core.config import FuncRef
from quantlens.core.errors import Location, Problem, QuantlensError
from quantlens.core.torch_engine.sources import ConstructionSites, record_construction
from quantlens.core.workspace import Workspace


@dataclass
class Batch:
    """One model input: positional and keyword arguments for ``model(*args, **kwargs)``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    labels: Any = None
    source: Location | None = None
    """The line of the data function that produced it (its ``def`` line): where a problem with
    the batch (a forward that fails on it, a shape that differs) is shown."""

    @property
    def size(self) -> int:
        for t in [*self.args, *self.kwargs.values()]:
            if isinstance(t, torch.Tensor) and t.ndim > 0:
                return int(t.shape[0])
        return 1

    @property
    def input(self) -> torch.Tensor | None:
        """The first tensor (positional arguments first): the model input that is quantized."""
        return next((t for t in [*self.args, *self.kwargs.values()] if isinstance(t, torch.Tensor)), None)

    def shapes(self) -> str:
        """Its tensors' shapes for a message: ``(4, 16, 101)``, ``(4, 16), mask=(4,)``."""
        parts = [str(tuple(t.shape)) for t in self.args if isinstance(t, torch.Tensor)]
        parts += [f"{k}={tuple(v.shape)}" for k, v in self.kwargs.items() if isinstance(v, torch.Tensor)]
        return ", ".join(parts)


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
        where = Location(str(Path(exc.filename or path).resolve()), exc.lineno or 0, exc.offset or 0)
        raise QuantlensError([Problem(f"syntax error: {exc.msg}", where, code="load")]) from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any error in user code is reported, not raised
        sys.modules.pop(name, None)
        raise user_failure(f"importing {path.name}", exc, roots, Location(str(path))) from exc
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


@dataclass(frozen=True)
class UserFunction:
    """A function of the user's that quantlens calls without arguments (the model factory, the
    data function), with the two places a problem about it is shown: the config line that
    names it and its ``def`` line, where the fix usually goes."""

    fn: Callable[..., Any]
    label: str
    """How messages name it: ``model factory build()``, ``data function batches()``."""
    config: Location | None = None
    definition: Location | None = None

    @staticmethod
    def load(ref: FuncRef, role: str, roots: list[Path]) -> UserFunction:
        """Import ``ref``'s file and take its function; ``role`` is "model factory" or "data function"."""
        fn = load_function(ref, roots)
        return UserFunction(fn, f"{role} {ref.function}()", ref.location, ref.definition() or defined_at(fn, roots))

    @staticmethod
    def of(fn: Callable[..., Any], role: str, roots: list[Path]) -> UserFunction:
        """A function handed over in Python (no config line: problems land on its def line)."""
        name = getattr(fn, "__name__", type(fn).__name__)
        return UserFunction(fn, f"{role} {name}()", None, defined_at(fn, roots))

    def problem(self, message: str, code: str, hint: str = "") -> Problem:
        """A problem with the function as a whole: at the config line, the def line related
        (at the def line alone when no config names the function)."""
        if self.config is None:
            return Problem(message, self.definition, code, hint)
        return Problem(message, self.config, code, hint, (self.definition,) if self.definition else ())

    def error(self, message: str, code: str, hint: str = "") -> QuantlensError:
        return QuantlensError([self.problem(message, code, hint)])

    def failure(self, exc: BaseException, roots: list[Path], during: str = "") -> QuantlensError:
        """The function raised or exited (``during`` says when, e.g. " while producing batch 3")."""
        return user_failure(f"{self.label}{during}", exc, roots, self.config, self.definition)

    def call(self, roots: list[Path]) -> Any:
        """Call with no arguments; a signature that needs some, an exception or ``sys.exit``
        becomes a located problem."""
        needed = required_parameters(self.fn)
        if needed:
            raise self.error(f"{self.label} needs arguments ({', '.join(needed)}); it must be callable with none",
                             "load", hint="give the parameters default values, or name a function without any")
        try:
            return self.fn()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
            raise self.failure(exc, roots) from exc


def required_parameters(fn: Callable[..., Any]) -> list[str]:
    """Parameters a call without arguments leaves unbound (checked before calling, so the
    problem is not a TypeError raised in quantlens' own frame)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins): the call itself will tell
        return []
    try:
        signature.bind()
    except TypeError:
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        return [p.name for p in signature.parameters.values() if p.default is p.empty and p.kind not in variadic]
    return []


def defined_at(fn: Callable[..., Any], roots: list[Path]) -> Location | None:
    """The ``def`` line of a workspace function (None for library code and for callables
    without source: a problem must not point into torch)."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None or not Workspace(roots).contains(code.co_filename):
        return None
    path = Path(code.co_filename).resolve()
    top_level = getattr(fn, "__qualname__", "") == code.co_name
    # a top-level def is located exactly as the config's FuncRef locates it (the def line, past
    # any decorators); a nested function or a lambda by its first line
    return (FuncRef(path, code.co_name).definition() if top_level else None) or Location(str(path), code.co_firstlineno)


def build_model(ref: FuncRef, roots: list[Path], weights: Path | None = None,
                weights_location: Location | None = None) -> tuple[nn.Module, ConstructionSites]:
    """Call the factory (recording construction sites) and load the checkpoint if any."""
    model, sites = construct(UserFunction.load(ref, "model factory", roots), roots)
    if weights is not None:
        load_checkpoint(model, weights, weights_location)
    model.eval()
    return model, sites


def construct(factory: UserFunction, roots: list[Path]) -> tuple[nn.Module, ConstructionSites]:
    """Call the factory while recording the line that creates each module."""
    with record_construction(Workspace(roots)) as sites:
        model = factory.call(roots)
    if not isinstance(model, nn.Module):
        raise factory.error(f"{factory.label} returned {type(model).__name__}, not a torch.nn.Module", "load")
    return model, sites


def load_checkpoint(model: nn.Module, path: Path, location: Location | None) -> None:
    """``torch.load(weights_only=True)``: a checkpoint can never run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise QuantlensError([Problem(f"cannot load checkpoint {path.name}: {exception_text(exc) or type(exc).__name__}", location, code="load",
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
    """Call the data function (the validation function ``with_labels``) and yield checked
    batches on ``device``."""
    role = "validation function" if with_labels else "data function"
    yield from checked_batches(UserFunction.load(ref, role, roots), roots, device, limit, with_labels)


def checked_batches(source: UserFunction, roots: list[Path], device: torch.device, limit: int | None = None,
                    with_labels: bool = False) -> Iterator[Batch]:
    """Call ``source`` and yield its items as checked batches; every problem names the
    function and the batch."""
    items = _iterator(source, roots)
    count = 0
    while limit is None or count < limit:
        try:
            item = next(items)
        except StopIteration:
            break
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
            raise source.failure(exc, roots, f" while producing batch {count}") from exc
        try:
            batch = to_batch(item, device, with_labels, None, count)
        except QuantlensError as exc:
            raise QuantlensError([source.problem(f"{source.label}: {p.message}", p.code, p.hint)
                                  for p in exc.problems]) from None
        batch.source = source.definition or source.config
        yield batch
        count += 1
    if count == 0:
        raise source.error(f"{source.label} produced no batches", "data",
                           hint="the representative dataset must yield at least one batch")


def _iterator(source: UserFunction, roots: list[Path]) -> Iterator[Any]:
    produced = source.call(roots)
    if not isinstance(produced, Iterable):
        raise source.error(f"{source.label} returned {type(produced).__name__}, not an iterable of batches", "data",
                           hint="return a list of batches, or make it a generator that yields them")
    try:
        return iter(produced)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a user __iter__
        raise source.failure(exc, roots) from exc


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


EXIT_HINT = ("sys.exit() would end quantlens itself: raise an exception instead, and keep script code under "
             "`if __name__ == \"__main__\":`")


def user_failure(subject: str, exc: BaseException, roots: list[Path], fallback: Location | None,
                 definition: Location | None = None) -> QuantlensError:
    """``subject`` (e.g. "model factory build()") raised ``exc`` or called ``sys.exit``: a
    problem at the innermost workspace frame (``fallback`` when there is none), with the
    function's ``def`` line related when that is elsewhere."""
    where = Workspace(roots).innermost(exc) or fallback
    related = (definition,) if definition is not None and not _same_line(definition, where) else ()
    if isinstance(exc, SystemExit):
        return QuantlensError([Problem(f"{subject} called {_exit_call(exc)}", where, "user-code", EXIT_HINT, related)])
    return QuantlensError([Problem(f"{subject} raised {describe_exception(exc)}", where, "user-code", related=related)])


def user_error(what: str, exc: BaseException, roots: list[Path], fallback: Location | None) -> QuantlensError:
    """Like :func:`user_failure`, with ``what`` naming the call and its verb ("the evaluation
    function raised")."""
    where = Workspace(roots).innermost(exc) or fallback
    return QuantlensError([Problem(f"{what} {describe_exception(exc)}", where, code="user-code")])


def describe_exception(exc: BaseException) -> str:
    """``TypeName: first line of the message`` (the type alone when the message is empty)."""
    text = exception_text(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def exception_text(exc: BaseException) -> str:
    """The first line of ``str(exc)``, else of ``repr(exc)``, else ``<unprintable TypeName>``:
    a user's exception whose ``__str__`` itself raises must still give a message, not a crash
    of the error path."""
    for render in (str, repr):
        try:
            lines = render(exc).strip().splitlines()
        except Exception:  # noqa: BLE001 - user code in __str__ / __repr__
            continue
        return lines[0] if lines else ""
    return f"<unprintable {type(exc).__name__}>"


def _exit_call(exc: SystemExit) -> str:
    if exc.code is None:
        return "sys.exit()"
    try:
        return f"sys.exit({exc.code!r})"
    except Exception:  # noqa: BLE001 - a user object's __repr__
        return f"sys.exit(<{type(exc.code).__name__}>)"


def _same_line(a: Location, b: Location | None) -> bool:
    return b is not None and (a.file, a.line) == (b.file, b.line)


def _summarise_state_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[1:4]) if len(lines) > 1 else text

