"""What calibration hands over: the quantization points and their streaming statistics.

These are plain numpy dataclasses so the language-server process can hold them, search
thresholds and run the diagnosis with numpy alone; the worker that owns torch fills them.
They round-trip through msgpack (never pickle): arrays travel as raw little-endian bytes
with dtype and shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import msgpack
import numpy as np

from quantlens.core import histogram
from quantlens.core.distribution import Distribution
from quantlens.core.errors import Location

FORMAT_VERSION = 3
"""Bumped whenever the serialized layout changes; older caches are then recomputed."""


@dataclass
class PointInfo:
    """A quantization point: where a tensor is quantized in deployment.

    ``modules`` lists the qualified names of the modules it covers, in execution order; the
    output of the last one (or of ``op`` for functional points) is what gets quantized.
    """

    name: str
    kind: str
    """"module" (a module or fused module group), "function" (a functional op) or "input" (the
    model input, the first tensor of each batch: quantized as in MCT, which quantizes the model
    input by default; no modules, ``source`` at the data function's ``def`` line)."""
    op: str
    """Human name of what it computes, e.g. "Conv2d+BatchNorm2d+ReLU6", "cat", "matmul"."""
    modules: list[str]
    module_types: list[str]
    activation: str | None
    """Activation function applied at this point (fused or on its own), e.g. "gelu"."""
    source: Location | None
    """Line of user code that created the module (constructor call), or the op's call site."""
    source_stack: list[Location] = field(default_factory=list)
    """Workspace frames from the creating line outwards (helpers, loops, the factory)."""
    call_site: Location | None = None
    """Workspace line where the point is applied in forward."""
    output_function: str | None = None
    """Key of the functional op whose output is quantized (function points, fused F.relu)."""
    weight_module: str | None = None
    """Qualified name of the conv/linear whose (BN-folded) weights this point quantizes."""
    folded_bn: str | None = None
    channel_axis: int = -1
    order: int = 0
    """Execution order in the first calibration batch."""
    num_inputs: int = 1
    inputs: list[str] = field(default_factory=list)
    """Points whose outputs this point consumes, directly or through ops that are no points
    (reshapes, pooling, products with constants), in execution order: the data flow of the
    discovery forward; the points that read the model input name the "input" point. Empty when
    it reads only constants (or model inputs other than the first tensor)."""
    feeds_output: bool = True
    """Whether this point's output reaches the model output (the first tensor forward returns,
    which the simulation compares): False for a side head whose result is dropped or returned
    beside the output. True everywhere when the output's data flow could not be followed."""
    constant_inputs: list[int] = field(default_factory=list)
    """Indices, among the op's tensor inputs, of the operands that do not vary with the model
    input: parameters, buffers and what forward computes from them alone."""
    library_source: Location | None = None
    """The library's own line for a point made inside library code (outside the workspace): the
    line in a library constructor that created the module (``self.linear1 = Linear(...)`` in
    ``TransformerEncoderLayer.__init__``) or, for a functional point, the line in a library
    forward that applied the op (its residual add). A secondary location beside ``source``,
    which stays the workspace line; None when the workspace created or applied it directly."""

    @property
    def line(self) -> Location | None:
        """The workspace line a finding about the point is shown at: where it is created, or
        where it is applied for a point without a creating line."""
        return self.source or self.call_site

    def to_json(self) -> dict[str, Any]:
        """What the result JSON says about the point itself (docs/result-format.md)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "op": self.op,
            "modules": list(self.modules),
            "module_types": list(self.module_types),
            "activation_function": self.activation,
            "source": _location_json(self.source),
            "source_stack": [loc.to_json() for loc in self.source_stack],
            "call_site": _location_json(self.call_site),
            "library_source": _location_json(self.library_source),
            "order": self.order,
        }

    @staticmethod
    def from_json(obj: dict[str, Any]) -> PointInfo:
        """The inverse of :meth:`to_json`; what the JSON leaves out takes its default."""
        return PointInfo(
            name=obj["name"],
            kind=obj["kind"],
            op=obj["op"],
            modules=list(obj.get("modules", [])),
            module_types=list(obj.get("module_types", [])),
            activation=obj.get("activation_function"),
            source=Location.from_json(obj.get("source")),
            source_stack=[loc for loc in map(Location.from_json, obj.get("source_stack", [])) if loc is not None],
            call_site=Location.from_json(obj.get("call_site")),
            library_source=Location.from_json(obj.get("library_source")),
            order=int(obj.get("order", 0)),
        )


def _location_json(location: Location | None) -> dict | None:
    return location.to_json() if location is not None else None


@dataclass
class PointStats:
    """Streaming statistics of one point's output, bounded in size whatever the data size.

    The histogram is the float-bits histogram of :mod:`quantlens.core.histogram`, kept for
    two disjoint halves of the calibration data (even and odd batches) so the stability of
    thresholds across the data can be judged without another pass.
    """

    count: int
    sumsq: float
    min: float
    max: float
    bins: np.ndarray
    """Indices of the non-empty bins (int32)."""
    counts: np.ndarray
    """Shape (2, len(bins)): counts per half."""
    sums: np.ndarray
    """Shape (2, len(bins)): sums of values per half."""
    sumsq_halves: np.ndarray
    channel_min: np.ndarray
    channel_max: np.ndarray
    input_min: np.ndarray
    """Per input tensor of the points whose rules read it: each tensor of a concatenation, both
    operands of a product, the input of a normalisation layer; empty elsewhere (the inputs
    there are earlier points' outputs)."""
    input_max: np.ndarray
    input_channel_mean: np.ndarray | None = None
    """Mean of the weight layer's input per input channel (for bias correction)."""
    nonfinite: int = 0
    batches: int = 0

    def distribution(self, half: int | None = None) -> Distribution:
        """The whole data (``half`` None) or one half as a :class:`Distribution`."""
        if half is None:
            return Distribution.from_histogram(self.bins, self.counts.sum(0), self.sums.sum(0), self.sumsq,
                                               self.min, self.max)
        return Distribution.from_histogram(
            self.bins, self.counts[half], self.sums[half], float(self.sumsq_halves[half])
        )

    @property
    def finite_count(self) -> int:
        return int(self.counts.sum())

    def negative_fraction(self) -> float:
        neg = self.bins < histogram.OFFSET
        total = self.counts.sum()
        _, hi = histogram.bin_bounds(self.bins)
        strictly = neg & (hi < 0)  # the bin of -0.0 (and |x| < 2^-134) holds zeros, not negatives
        return float(self.counts[:, strictly].sum() / total) if total else 0.0


MAX_SHAPE_MISMATCHES = 8
"""Batches with odd shapes kept in :class:`BatchShapes` (the rest are only counted)."""


@dataclass
class ShapeMismatch:
    """One calibration batch whose shapes disagree: its input (first tensor) with the first
    batch's beyond the batch dimension, or its model output's batch size with its input's."""

    batch: int
    """Index of the batch in the data function's order (0-based)."""
    input: list[int]
    output: list[int] | None
    """Shape of the first tensor the model returned (None: it returned no tensor)."""


@dataclass
class BatchShapes:
    """The shapes calibration saw, in bounded size: the first batch's, and the first
    :data:`MAX_SHAPE_MISMATCHES` batches that differ. A model that accepts inputs of another
    length may fold samples into rows silently (a reshape to a fixed row width): statistics
    and errors are then computed on data the deployment never sees, with no error raised."""

    input: list[int] = field(default_factory=list)
    """Shape of the first batch's first tensor."""
    output: list[int] | None = None
    """Shape of the first tensor the model returned for the first batch."""
    mismatches: list[ShapeMismatch] = field(default_factory=list)
    input_mismatches: int = 0
    """Batches whose input shape differs from the first batch's (dimension 0 aside), in all."""
    output_mismatches: int = 0
    """Batches whose output batch size differs from their input's, in all."""

    def observe(self, batch: int, shape: list[int], output: list[int] | None) -> None:
        """Record batch number ``batch``: its input's ``shape`` and its output's (batch 0 is
        the reference)."""
        output = None if output is None else list(output)
        if batch == 0:
            self.input, self.output = list(shape), output
        odd_input = self.input_differs(shape)
        odd_output = self.output_differs(shape, output)
        self.input_mismatches += odd_input
        self.output_mismatches += odd_output
        if (odd_input or odd_output) and len(self.mismatches) < MAX_SHAPE_MISMATCHES:
            self.mismatches.append(ShapeMismatch(batch, list(shape), output))

    def input_differs(self, shape: list[int]) -> bool:
        """Another rank than the first batch's input, or another size beyond the batch dimension."""
        return len(shape) != len(self.input) or list(shape[1:]) != list(self.input[1:])

    @staticmethod
    def output_differs(shape: list[int], output: list[int] | None) -> bool:
        """The output's dimension 0 is not the batch size of the input of ``shape`` (when both
        have a dimension 0)."""
        return bool(shape) and output is not None and bool(output) and output[0] != shape[0]


@dataclass
class CalibrationResult:
    """Points and statistics of one calibration run."""

    points: list[PointInfo]
    stats: dict[str, PointStats]
    num_batches: int = 0
    num_samples: int = 0
    input_signature: str = ""
    batch_limit: int | None = None
    """The ``num_calibration_batches`` cap the batches were read under (None: no cap): a count
    of batches equal to it may have cut the data function short, a smaller one did not."""
    batch_shapes: BatchShapes = field(default_factory=BatchShapes)
    """The batches' input and output shapes, and the batches whose shapes disagree."""
    version: int = FORMAT_VERSION

    def point(self, name: str) -> PointInfo:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_msgpack(self) -> bytes:
        return msgpack.packb(encode(self), use_bin_type=True)

    @staticmethod
    def from_msgpack(data: bytes) -> CalibrationResult:
        """Raises ValueError on anything that is not this format (a cache loader discards it)."""
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if not isinstance(obj, dict) or obj.get("version") != FORMAT_VERSION:
                raise ValueError(f"cache format {obj.get('version') if isinstance(obj, dict) else '?'} "
                                 f"is not {FORMAT_VERSION}")
            return _decode_calibration(obj)
        except (KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
            raise ValueError(f"corrupt calibration record: {type(exc).__name__}: {exc}") from None


def encode(value: Any) -> Any:
    """Dataclasses, arrays and locations as msgpack-ready maps (arrays as raw bytes)."""
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        return {"__nd__": True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(value, Location):
        return {"__loc__": True, **value.to_json()}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: encode(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode(value: Any) -> Any:
    """The inverse of :func:`encode` for arrays and locations; dataclasses come back as dicts."""
    if isinstance(value, dict):
        if value.get("__nd__"):
            return np.frombuffer(value["data"], dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
        if value.get("__loc__"):
            return Location(value["file"], value["line"], value["column"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def _decode_calibration(obj: dict) -> CalibrationResult:
    points = [PointInfo(**decode(p)) for p in obj["points"]]
    stats = {k: PointStats(**decode(v)) for k, v in obj["stats"].items()}
    return CalibrationResult(
        points=points,
        stats=stats,
        num_batches=obj["num_batches"],
        num_samples=obj["num_samples"],
        input_signature=obj["input_signature"],
        batch_limit=obj["batch_limit"],
        batch_shapes=_decode_shapes(decode(obj["batch_shapes"])),
        version=obj["version"],
    )


def _decode_shapes(obj: dict) -> BatchShapes:
    mismatches = [ShapeMismatch(**m) for m in obj.pop("mismatches")]
    return BatchShapes(**obj, mismatches=mismatches)
