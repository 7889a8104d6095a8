"""Finding the quantization points of a model from one forward pass.

The first calibration batch runs with a discovery handler that follows tensors by identity:
a BatchNorm whose input *is* a conv's output is folded into it, an activation whose input
*is* that output is fused. The result is the list of points in execution order, each with
the modules it covers, its creating line and its call site.

The same forward follows the data flow through every op (reshapes and indexing included):
each tensor carries the points it was computed from and whether it varies with the model
input, which gives each point its producers, tells a side head that never reaches the
model output from the path to it, and a constant operand (a buffer) from an activation.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantlens.core.errors import Location
from quantlens.core.stats import PointInfo
from quantlens.core.torch_engine import ops
from quantlens.core.torch_engine.instrument import first_tensor, tensor_inputs
from quantlens.core.torch_engine.sources import ConstructionSites, Workspace, library_frame

INPUT_POINT = "input"
"""Name of the model input's point (kind "input"; "model_input" if a module is named "input")."""


@dataclass
class _Group:
    """A point under construction: an anchor module and what got fused onto it."""

    members: list[str]
    kinds: list[str]
    module_types: list[str]
    activation: str | None = None
    function_key: str | None = None
    """Set when the group ends in a functional op (its output is the point)."""
    func: Callable | None = None
    func_kwargs: dict[str, Any] = field(default_factory=dict)
    order: int = 0
    ndim: int = 0
    num_inputs: int = 1
    call_site: Location | None = None
    library_source: Location | None = None
    """For a functional point: the library line that applied the op (None: the workspace did)."""
    inputs: set[str] = field(default_factory=set)
    """Groups whose outputs it consumes (the data flow)."""
    varies: bool = False
    """Whether its output varies with the model input."""
    constant_inputs: list[int] = field(default_factory=list)


Flow = tuple[frozenset[str], bool]
"""What a tensor was computed from: the nearest points upstream, and whether it varies with the model input."""


class Discovery:
    """Handler for :class:`Instrumentation` that builds the point list."""

    def __init__(self, model: nn.Module, workspace: Workspace, sites: ConstructionSites | None):
        self.model = model
        self.workspace = workspace
        self.sites = sites
        self.modules = dict(model.named_modules())
        self.groups: dict[str, _Group] = {}
        self.group_of_module: dict[str, str] = {}
        self.producer: dict[int, tuple[torch.Tensor, str, int]] = {}
        """id(tensor) -> (tensor kept alive, group name, fusion stage: 0 anchor, 1 after BN, 2 final)."""
        self.conflicts: set[str] = set()
        self.call_sites: dict[str, Location] = {}
        self.flow: dict[int, tuple[weakref.ref, Flow]] = {}
        """id(tensor) -> (weak reference, its flow): every tensor of the forward, none kept alive."""
        self.output_points: frozenset[str] = frozenset()
        """The points the model output is computed from (empty: not followed)."""
        self._order = 0
        self.input_point: str | None = None
        """Name of the model input's point (None: the first tensor holds no floats)."""
        self.input_source: Location | None = None

    def model_inputs(self, tensors: Iterable[Any], source: Location | None = None) -> None:
        """Mark the batch's tensors (before the forward): what varies with the data. The first
        tensor, when it holds floats, is the model input's point (deployment quantizes it, as
        MCT does), first in order and the producer of what reads it; ``source`` is its line
        (the data function's)."""
        found = [t for t in tensors if isinstance(t, torch.Tensor)]
        for i, t in enumerate(found):
            origin: frozenset[str] = frozenset()
            if i == 0 and t.is_floating_point():
                self.input_point = INPUT_POINT if INPUT_POINT not in self.modules else f"model_{INPUT_POINT}"
                self.input_source = source
                self._new_group(self.input_point, [], [], [], t).varies = True
                origin = frozenset({self.input_point})
            self._set_flow(t, (origin, True))

    def tensor_op(self, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        """An op that is no point: its output is computed from what its inputs were (an
        in-place op returning None, ``x[i] = y``, changes its first argument)."""
        produced = _tensors(args[:1]) if output is None else _tensors(output)
        if produced:
            flow = self._flow_of(_tensors((args, kwargs)))
            for t in produced:
                self._set_flow(t, flow)

    # -- handler interface -------------------------------------------------------------
    def module_input(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        if name not in self.call_sites:
            frames = self.workspace.frames(sys._getframe(1))
            if frames:
                self.call_sites[name] = frames[0]

    def module_output(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if ops.is_point_module(module):
            self._flow_point(self._module_point(name, module, args, output), _tensors(args), output)
        if module is self.model:
            self.output_points = self._flow_of(_tensors(first_tensor(output)))[0]
        return None

    def _module_point(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> str:
        """The group a point module's output belongs to: a new one, or the one it fuses onto."""
        out = first_tensor(output)
        inp = args[0] if args and isinstance(args[0], torch.Tensor) else None
        source = self._producer(inp)
        if isinstance(module, ops.WEIGHTED):
            self._new_group(name, [name], ["weighted"], [type(module).__name__], out)
            self._mark(out, name, 0)
            return name
        if isinstance(module, ops.BATCHNORM) and source and source[1] == 0 and self._fusable(name, source[0]):
            self._fuse(source[0], name, "bn", module, None)
            self._mark(out, source[0], 1)
            return source[0]
        act = ops.activation_name(module)
        if act and source and source[1] in (0, 1) and self._fusable(name, source[0]):
            self._fuse(source[0], name, "act", module, act)
            self._mark(out, source[0], 2)
            return source[0]
        if name in self.group_of_module:
            # A shared module met again in another context: keep its first role.
            return self.group_of_module[name]
        group = self._new_group(name, [name], ["module"], [type(module).__name__], out)
        group.activation = act
        self._mark(out, name, 2)
        return name

    def function_output(self, key: str, op: str, func: Callable, args: tuple[Any, ...],
                        kwargs: dict[str, Any], output: Any) -> None:
        out = first_tensor(output)
        if out is None or not out.is_floating_point():
            self.tensor_op(args, kwargs, output)
            return None
        inputs = tensor_inputs(op, args, kwargs)
        consumed = _tensors((args, kwargs))
        source = self._producer(inputs[0] if inputs else None)
        call_site = self._function_call_site()
        if op in ops.ACTIVATION_OPS and source and source[1] in (0, 1):
            group = self.groups[source[0]]
            if group.activation is None:
                group.members.append(key)
                group.kinds.append("function")
                group.module_types.append(op)
                group.activation = op
                group.function_key = key
                group.func = func
                group.func_kwargs = {k: v for k, v in kwargs.items()}
                self._mark(out, source[0], 2)
                self._flow_point(source[0], consumed, output)
                return None
        group = self._new_group(key, [], [], [], out)
        group.function_key = key
        group.func = func
        group.activation = op if op in ops.ACTIVATION_OPS else None
        group.num_inputs = max(len(inputs), 1)
        group.kinds = ["function"]
        group.module_types = [op]
        group.call_site = call_site
        group.library_source = library_frame(self.workspace, sys._getframe(1))
        group.constant_inputs = [i for i, t in enumerate(inputs) if not self._flow_of([t])[1]]
        self._mark(out, key, 2)
        self._flow_point(key, consumed, output)
        return None

    # -- helpers -----------------------------------------------------------------------
    def _producer(self, tensor: torch.Tensor | None) -> tuple[str, int] | None:
        if tensor is None:
            return None
        hit = self.producer.get(id(tensor))
        if hit is None or hit[0] is not tensor:
            return None
        return hit[1], hit[2]

    def _flow_of(self, tensors: list[torch.Tensor]) -> Flow:
        """The union of the tensors' flows; a tensor never seen (a parameter, a buffer, a
        constant made in forward) comes from no point and does not vary."""
        points: set[str] = set()
        varies = False
        for t in tensors:
            hit = self.flow.get(id(t))
            if hit is not None and hit[0]() is t:
                points |= hit[1][0]
                varies = varies or hit[1][1]
        return frozenset(points), varies

    def _set_flow(self, tensor: torch.Tensor, flow: Flow) -> None:
        self.flow[id(tensor)] = (weakref.ref(tensor), flow)

    def _flow_point(self, group_name: str, consumed: list[torch.Tensor], output: Any) -> None:
        """A point's output: its inputs are the points upstream of what it consumed, and what
        it produces comes from this point alone."""
        group = self.groups[group_name]
        points, varies = self._flow_of(consumed)
        group.inputs |= points - {group_name}
        group.varies = group.varies or varies
        for t in _tensors(output):
            self._set_flow(t, (frozenset({group_name}), group.varies))

    def _feeding(self) -> set[str] | None:
        """The points the model output is computed from, through any number of points
        (None when the output's flow was not followed: then no point is ruled out)."""
        if not self.output_points:
            return None
        seen = set(self.output_points)
        todo = list(seen)
        while todo:
            for upstream in self.groups[todo.pop()].inputs - seen:
                seen.add(upstream)
                todo.append(upstream)
        return seen

    def _mark(self, tensor: torch.Tensor | None, group_name: str, stage: int) -> None:
        if tensor is not None:
            self.producer[id(tensor)] = (tensor, group_name, stage)

    def _new_group(self, name: str, members: list[str], kinds: list[str], types: list[str],
                   out: torch.Tensor | None) -> _Group:
        group = _Group(members, kinds, types, order=self._order, ndim=out.ndim if out is not None else 0)
        self._order += 1
        self.groups[name] = group
        for m in members:
            self.group_of_module[m] = name
        return group

    def _fusable(self, module_name: str, group_name: str) -> bool:
        owner = self.group_of_module.get(module_name)
        if owner is not None and owner != group_name:
            self.conflicts.add(module_name)
        return owner is None

    def _fuse(self, group_name: str, module_name: str, kind: str, module: nn.Module, act: str | None) -> None:
        group = self.groups[group_name]
        group.members.append(module_name)
        group.kinds.append(kind)
        group.module_types.append(type(module).__name__)
        if act:
            group.activation = act
        self.group_of_module[module_name] = group_name

    def _function_call_site(self) -> Location | None:
        frames = self.workspace.frames(sys._getframe(1))
        return frames[0] if frames else None

    # -- result ------------------------------------------------------------------------
    def points(self) -> list[PointInfo]:
        """The discovered points in execution order."""
        result: list[PointInfo] = []
        feeding = self._feeding()
        for name, group in sorted(self.groups.items(), key=lambda kv: kv[1].order):
            if name == self.input_point:
                result.append(self._input_info(group))
                continue
            modules = [m for m, k in zip(group.members, group.kinds) if k != "function"]
            anchor = self.modules.get(modules[0]) if modules else None
            frames = self.sites.get(anchor) if (self.sites is not None and anchor is not None) else []
            call_site = self.call_sites.get(modules[0]) if modules else group.call_site
            source = (frames[0] if frames else call_site) or self._enclosing_site(modules[0] if modules else name)
            weight_module = modules[0] if isinstance(anchor, ops.WEIGHTED) else None
            folded = next((m for m, k in zip(group.members, group.kinds) if k == "bn"), None)
            result.append(PointInfo(
                name=name,
                kind="module" if modules else "function",
                op="+".join(group.module_types),
                modules=modules,
                module_types=[t for t, k in zip(group.module_types, group.kinds) if k != "function"],
                activation=group.activation,
                source=source,
                source_stack=list(frames[1:]) if frames else [],
                call_site=call_site,
                library_source=(self.sites.library(anchor) if self.sites is not None and anchor is not None
                                else group.library_source),
                output_function=group.function_key,
                weight_module=weight_module,
                folded_bn=folded,
                channel_axis=self._channel_axis(anchor, group.ndim),
                order=len(result),
                num_inputs=group.num_inputs,
                inputs=sorted(group.inputs, key=lambda n: self.groups[n].order),
                feeds_output=feeding is None or name in feeding,
                constant_inputs=group.constant_inputs,
            ))
        return result

    def _input_info(self, group: _Group) -> PointInfo:
        """The model input's point: no module, shown at the data function's line; the model
        output is computed from it (a model that ignores its input is not worth a rule)."""
        assert self.input_point is not None
        return PointInfo(name=self.input_point, kind="input", op="input", modules=[], module_types=[], activation=None,
                         source=self.input_source, channel_axis=self._channel_axis(None, group.ndim), order=0)

    def _enclosing_site(self, name: str) -> Location | None:
        """The workspace line that created the nearest enclosing module that has one: for a
        point whose module and op lines are all library code (a library model's forward run
        from no workspace frame, a module built before the factory ran), the workspace line
        that called into the library."""
        if self.sites is None:
            return None
        parts = name.split(".")
        for depth in range(len(parts) - 1, -1, -1):
            module = self.modules.get(".".join(parts[:depth]))
            frames = self.sites.get(module) if module is not None else []
            if frames:
                return frames[0]
        return None

    @staticmethod
    def _channel_axis(anchor: nn.Module | None, ndim: int) -> int:
        """NCHW/NCDHW tensors and conv-family outputs are channels-first; the rest channels-last."""
        if ndim <= 1:
            return 0
        if ndim in (4, 5) or (ndim == 3 and isinstance(anchor, ops.CHANNELS_FIRST)):
            return 1
        return ndim - 1


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in an op's arguments or result: nested tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []
