"""Inlay hints: a compact quantization summary at the end of every line that creates a layer.

The label answers "how is this layer quantized and how much survives" without a hover:
bits, threshold and the most telling SQNR available (cumulative: the fully quantized model
at this point; else isolated; else the prediction from the statistics). Hints go on source
lines only: a call site in forward is where a hover helps, a hint there would repeat one.
"""

from __future__ import annotations

from lsprotocol import types

from quantlens.core.result import PointResult
from quantlens.daemon.lsp.hover import bits_label, fmt
from quantlens.daemon.lsp.lines import LineIndex


def inlay_hints(index: LineIndex, path: str, lines: list[str], start_line: int,
                end_line: int) -> list[types.InlayHint]:
    """Hints for the 0-based lines ``start_line..end_line`` (inclusive) of the document ``lines``.

    ``lines`` is the document's current text, so the hint sits at the end of what the line
    holds now; lines the document no longer has are skipped.
    """
    hints = []
    for line, points in index.sources_in(path).items():
        row = line - 1
        if start_line <= row <= end_line and row < len(lines):
            hints.append(types.InlayHint(
                position=types.Position(line=row, character=_utf16_length(lines[row].rstrip("\r\n"))),
                label=line_label(points),
                kind=types.InlayHintKind.Type,
                padding_left=True,
                tooltip="\n".join(f"{p.name}: {point_label(p)}" for p in points),
            ))
    return hints


def point_label(point: PointResult) -> str:
    """``int8 t=4 31.2dB``, ``uint8 ...`` when unsigned, ``float`` when left unquantized."""
    a = point.activation
    if not a.quantize:
        return "float"
    return f"{bits_label(a)} t={fmt(a.threshold)} {reported_sqnr(point):.1f}dB"


def line_label(points: list[PointResult]) -> str:
    """One point's label, or ``12 pts worst 8.1dB`` for a line that creates several."""
    if len(points) == 1:
        return point_label(points[0])
    quantized = [reported_sqnr(p) for p in points if p.activation.quantize]
    if not quantized:
        return f"{len(points)} pts float"
    return f"{len(points)} pts worst {min(quantized):.1f}dB"


def reported_sqnr(point: PointResult) -> float:
    """Cumulative SQNR, else isolated, else the activation-only prediction."""
    for sums in (point.cumulative, point.isolated):
        if sums is not None:
            return sums.sqnr_db
    return point.activation.predicted_sqnr_db


def _utf16_length(text: str) -> int:
    """LSP positions count UTF-16 code units by default, not code points."""
    return len(text.encode("utf-16-le")) // 2
