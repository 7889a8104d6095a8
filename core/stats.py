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

FORMAT_VERSION = 2
"""Bumped whenever the serialized layout changes; older caches are then recomputed."""


@dataclass
class PointInfo:
    """A quantization point: where a tensor is quantized in deployment.

    ``modules`` lists the qualified names of the modules it covers, in execution order; the
    output of the last one (or of ``op`` for functional points) is what gets quantized.
    """

    name: str
    kind: str
    """"module" (a module or fused module group) or "function" (a functional op)."""
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
    discovery forward. Empty when it reads only the model input or constants."""
    feeds_output: bool = True
    """Whether this point's output reaches the model output (the first tensor forward returns,
    which the simulation compares): False for a side head whose result is dropped or returned
    beside the output. True everywhere when the output's data flow could not be followed."""
    constant_inputs: list[int] = field(default_factory=list)
    """Indices, among the op's tensor inputs, of the operands that do not vary with the model
    input: parameters, buffers and what forward computes from them alone."""


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
        version=obj["version"],
    )
