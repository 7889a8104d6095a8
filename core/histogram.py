"""The float-bits histogram: a fixed, range-free binning of float32 values.

A bin is a float32 bit pattern with its low ``SHIFT`` bits dropped: sign, 8 exponent bits
and ``MANTISSA_BITS`` mantissa bits. Every octave [2^e, 2^(e+1)) therefore holds
2^MANTISSA_BITS equal bins, and every bin edge is a multiple of its own width.

Why this binning and not a linear 2048-bin histogram re-binned as the range grows:

* It never needs re-binning: the range of the data is not needed up front, so one pass of
  the data with a single scatter per point is enough.
* Bins are aligned to powers of two. For a power-of-two threshold t = 2^k and an n-bit
  quantizer (step Delta = 2^(k-n+1) signed, 2^(k-n) unsigned), every rounding boundary
  (j + 1/2) * Delta and every level j * Delta falls on a bin edge as long as
  MANTISSA_BITS >= n. With per-bin counts and sums this makes the MSE and MAE of every
  power-of-two candidate *exact*, so the histogram cannot change which threshold wins.
* Relative resolution is constant (2^-8), so outliers a thousand times larger than the
  bulk do not wash the bulk into a handful of bins, which is where linear histograms fail.

The torch side computes ``x.view(uint32) >> SHIFT`` (this index XOR ``OFFSET``: positives
first) and packs counts with exact sums (:data:`PACK_SHIFT`); this module is the numpy
definition of the bins (what an index means), of the packing, and a reference builder.
"""

from __future__ import annotations

import numpy as np

MANTISSA_BITS = 8
"""Mantissa bits kept per bin: exact power-of-two search for quantizers of up to 8 bits."""
SHIFT = 23 - MANTISSA_BITS
NUM_MAGNITUDES = 1 << (31 - SHIFT)
"""Number of magnitude codes (exponent and kept mantissa bits)."""
NUM_BINS = 2 * NUM_MAGNITUDES
OFFSET = NUM_MAGNITUDES
"""Index = OFFSET + magnitude code for x >= +0.0; index = magnitude code for x <= -0.0."""
NONFINITE_CODE = 255 << MANTISSA_BITS
"""First magnitude code whose exponent is all ones (inf and NaN)."""
LOW_BITS_MASK = (1 << SHIFT) - 1
"""The mantissa bits a bin drops; within a bin a value is linear in them."""
PACK_SHIFT = 38
"""Packed accumulation: every value adds ``2^PACK_SHIFT + (its 32-bit pattern)`` to the int64
cell of its bin. A cell's patterns share their top bits (the bin code c), so the cell holds
``n * unit(c) + (sum of dropped bits)`` with ``unit(c) = 2^PACK_SHIFT + c * 2^SHIFT``: one
integer scatter both counts the values and sums them exactly (a value is its bin's base plus
its dropped bits times the bin's ulp)."""
MAX_PACKED_VALUES = 1 << 23
"""Values a cell may absorb before it is unpacked: their dropped bits sum below
2^(SHIFT + 23) = 2^PACK_SHIFT <= unit(c), so division separates the two parts, and the cell
stays below 2^23 * (2^38 + 2^32) + 2^38 < 2^63."""

_MAG_EDGES = np.empty(NUM_MAGNITUDES + 1, dtype=np.float64)
with np.errstate(invalid="ignore"):  # the top codes are inf/NaN bit patterns
    _MAG_EDGES[:NUM_MAGNITUDES] = (
        (np.arange(NUM_MAGNITUDES, dtype=np.uint64) << SHIFT).astype(np.uint32).view(np.float32)
    )
_MAG_EDGES[NUM_MAGNITUDES] = np.inf


def bin_indices(x: np.ndarray) -> np.ndarray:
    """Histogram indices of float32 values (the numpy twin of the torch collector)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.int32)
    return (bits >> SHIFT).astype(np.int64) + OFFSET


def histogram_from_values(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse histogram of raw values: (indices, counts, sums) of the non-empty bins."""
    idx = bin_indices(np.ravel(x))
    vals = np.ravel(x).astype(np.float32).astype(np.float64)
    codes, inverse = np.unique(idx, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(codes)).astype(np.float64)
    sums = np.bincount(inverse, weights=vals, minlength=len(codes))
    return codes.astype(np.int32), counts, sums


def bin_bounds(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value interval [lo, hi) of each histogram index (for negatives, (lo, hi])."""
    idx = np.asarray(indices, dtype=np.int64)
    negative = idx < OFFSET
    mag = np.where(negative, idx, idx - OFFSET)
    lo_mag = _MAG_EDGES[mag]
    hi_mag = _MAG_EDGES[mag + 1]
    lo = np.where(negative, -hi_mag, lo_mag)
    hi = np.where(negative, -lo_mag, hi_mag)
    return lo, hi


def pack_unit(codes: np.ndarray) -> np.ndarray:
    """What one value adds to the cell of bin code ``codes`` (= its bit pattern >> SHIFT),
    dropped bits aside. Index and code differ in the sign bit: index = code ^ OFFSET."""
    return (1 << PACK_SHIFT) + (np.asarray(codes, dtype=np.int64) << SHIFT)


def unpack(packed: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts and sums of dropped mantissa bits from the packed int64 cells of bin ``codes``."""
    packed = np.asarray(packed, dtype=np.int64)
    unit = pack_unit(codes)
    counts = packed // unit
    return counts, packed - counts * unit


def bin_sums(indices: np.ndarray, counts: np.ndarray, low_bit_sums: np.ndarray) -> np.ndarray:
    """Sum of the values in each (finite) bin, exactly up to one float64 rounding.

    A value in the bin of magnitude code m with dropped bits L is ``base(m) + L * ulp(m)``
    (the bits below the kept mantissa are the low bits of one binade), so a bin's sum is
    ``count * base + (sum of L) * ulp``, negated for the negative half.
    """
    idx = np.asarray(indices, dtype=np.int64)
    negative = idx < OFFSET
    mag = np.where(negative, idx, idx - OFFSET)
    exponent = mag >> MANTISSA_BITS
    ulp = np.ldexp(1.0, np.maximum(exponent, 1) - 150)  # 2^(e - 150); subnormals: e = 1's
    n = np.asarray(counts, dtype=np.float64)
    total = n * _MAG_EDGES[mag] + np.asarray(low_bit_sums, dtype=np.float64) * ulp
    return np.where(negative, -total, total)


def is_nonfinite(indices: np.ndarray) -> np.ndarray:
    """Mask of indices that hold inf or NaN."""
    idx = np.asarray(indices, dtype=np.int64)
    mag = np.where(idx < OFFSET, idx, idx - OFFSET)
    return mag >= NONFINITE_CODE
