"""Hook plumbing shared by discovery, calibration and simulation, without torch.fx.

Module hooks see every module call (and keep a stack of the modules currently running);
a TorchFunctionMode sees functional ops (``torch.cat``, ``x + y``, ``q @ k``, ``F.gelu``).
A functional op is named by the module running it, the op and its index among that
module's calls of the op in one forward: ``blocks.0.attn.matmul_1``. Models that torch.fx
cannot trace (data-dependent control flow, ``*args`` forwards) work unchanged.

A handler receives module outputs and functional op outputs and may return a replacement
(the simulation returns fake-quantized tensors); ops inside a point module (the
``F.conv2d`` inside ``nn.Conv2d``) are never reported on their own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from quantlens.core.torch_engine import ops

if TYPE_CHECKING:
    from quantlens.core.torch_engine.tape import Tape


class Handler(Protocol):
    def module_input(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None: ...

    def module_output(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any: ...

    def function_output(self, key: str, op: str, func: Callable, args: tuple[Any, ...],
                        kwargs: dict[str, Any], output: Any) -> Any: ...

    # Optional: ``tensor_op(args, kwargs, output)``, called after every other op outside point
    # modules (reshapes, indexing, pooling, products with constants), for a handler that
    # follows the data flow (discovery); the others leave it out and pay nothing for it.


class Instrumentation(TorchFunctionMode):
    """Context manager: hooks on ``model`` plus the function mode, calling ``handler``."""

    def __init__(self, model: nn.Module, handler: Handler, watched: set[str] | None = None,
                 watch_functions: bool = True, tape: Tape | None = None):
        super().__init__()
        self.tape = tape
        """Told of every module call and functional op, in order (the simulation's quantized pass)."""
        self.model = model
        self.handler = handler
        self.follow: Callable[[tuple[Any, ...], dict[str, Any], Any], None] | None = getattr(handler, "tensor_op", None)
        self.watched = watched
        self.watch_functions = watch_functions
        self.names = {m: n for n, m in model.named_modules()}
        self.point_modules = {m for m in self.names if ops.is_point_module(m)}
        self.stack: list[str] = []
        self.suppress = 0
        self.counters: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._handles: list[Any] = []

    def __enter__(self) -> Instrumentation:
        for module, name in self.names.items():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name, module)))
            self._handles.append(module.register_forward_hook(self._post_hook(name, module)))
        if self.watch_functions:
            super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.watch_functions:
            super().__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre_hook(self, name: str, module: nn.Module) -> Callable:
        is_root = module is self.model
        is_point = module in self.point_modules
        watched = self.watched is None or name in self.watched

        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            if is_root:
                self.stack.clear()
                self.suppress = 0
                self.counters.clear()
            self.stack.append(name)
            if self.tape is not None:
                self.tape.enter(name)
            if is_point:
                if watched and not self.suppress:
                    with torch._C.DisableTorchFunction():
                        self.handler.module_input(name, mod, args)
                self.suppress += 1

        return hook

    def _post_hook(self, name: str, module: nn.Module) -> Callable:
        is_point = module in self.point_modules
        watched = self.watched is None or name in self.watched

        def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if self.stack:
                self.stack.pop()
            if self.tape is not None:
                self.tape.exit(name, output)
            if is_point:
                self.suppress -= 1
            if watched and not self.suppress:
                with torch._C.DisableTorchFunction():
                    return self.handler.module_output(name, mod, args, output)
            return None

        return hook

    def __torch_function__(self, func: Callable, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        op = ops.FUNCTION_OPS.get(func)
        if self.suppress:
            return func(*args, **kwargs)
        if op is None or (op in ops.BINARY_OPS and not _two_tensors(args, kwargs)):
            output = func(*args, **kwargs)
            if self.follow is not None:
                self.follow(args, kwargs, output)
            return output
        output = func(*args, **kwargs)
        enclosing = self.stack[-1] if self.stack else ""
        index = self.counters[(enclosing, op)]
        self.counters[(enclosing, op)] = index + 1
        key = f"{enclosing}.{op}_{index}" if enclosing else f"{op}_{index}"
        if self.tape is not None:
            self.tape.function(key)
        replaced = self.handler.function_output(key, op, func, args, kwargs, output)
        return output if replaced is None else replaced


def _two_tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Binary ops are points only between two tensors with data (not x * 0.5, not x + bias scalar)."""
    operands = [a for a in (*args[:2], kwargs.get("other")) if isinstance(a, torch.Tensor)]
    return len(operands) >= 2 and all(a.numel() > 1 for a in operands)


def tensor_inputs(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The activation tensors an op consumes (each tensor of a concatenation)."""
    if op == "cat":
        seq = args[0] if args else kwargs.get("tensors", ())
        return [t for t in seq if isinstance(t, torch.Tensor)]
    found = [a for a in args if isinstance(a, torch.Tensor)]
    if "other" in kwargs and isinstance(kwargs["other"], torch.Tensor):
        found.append(kwargs["other"])
    return found


def first_tensor(value: Any) -> torch.Tensor | None:
    """The tensor a module or op produced (first of a tuple, e.g. MultiheadAttention)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def replace_first(value: Any, tensor: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return tensor
    if isinstance(value, tuple):
        return (tensor, *value[1:])
    if isinstance(value, list):
        return [tensor, *value[1:]]
    return value
