"""The float-bits histogram: bin indices, bounds, per-bin sums and power-of-two alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantlens.core.histogram import (
    LOW_BITS_MASK,
    MANTISSA_BITS,
    MAX_PACKED_VALUES,
    NUM_BINS,
    OFFSET,
    PACK_SHIFT,
    SHIFT,
    bin_bounds,
    bin_indices,
    bin_sums,
    histogram_from_values,
    is_nonfinite,
    pack_unit,
    unpack,
)
from tests.core.values import F32_DENORM, F32_MAX, F32_TINY, mixed_values


def _contains(lo: np.ndarray, hi: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sign-aware bin membership: [lo, hi) for x >= +0, (lo, hi] for x <= -0."""
    neg = np.signbit(x)
    return np.where(neg, (lo < x) & (x <= hi), (lo <= x) & (x < hi))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_value_lies_in_its_bin(seed):
    x = mixed_values(seed)
    idx = bin_indices(x)
    assert idx.min() >= 0 and idx.max() < NUM_BINS
    lo, hi = bin_bounds(idx)
    assert np.all(lo < hi)
    x64 = x.astype(np.float64)
    inside = _contains(lo, hi, x64)
    assert inside.all(), x[~inside][:10]
    # The sign decides the half of the index space.
    assert np.all((idx >= OFFSET) == ~np.signbit(x))
    assert not is_nonfinite(idx).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_counts_and_sums(seed):
    x = mixed_values(seed)
    codes, counts, sums = histogram_from_values(x)
    assert codes.dtype.kind == "i"
    assert np.all(np.diff(codes) > 0), "indices must be sorted and unique"
    assert np.all(counts > 0)
    assert counts.sum() == x.size
    idx = bin_indices(x)
    x64 = x.astype(np.float64)
    for code, count, total in zip(codes, counts, sums):
        members = x64[idx == code]
        assert count == members.size
        np.testing.assert_allclose(total, np.sum(members), rtol=1e-12, atol=0.0)
    # A bin's mean lies inside the bin.
    lo, hi = bin_bounds(codes)
    mean = sums / counts
    assert np.all((lo <= mean) & (mean <= hi))


def test_histogram_accepts_nd_and_float64_input():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(7, 11, 3))
    codes, counts, sums = histogram_from_values(x)
    ref_codes, ref_counts, ref_sums = histogram_from_values(x.astype(np.float32).ravel())
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-15)
    assert counts.sum() == x.size


def test_signed_zeros_are_separate_bins_touching_zero():
    idx = bin_indices(np.array([0.0, -0.0], dtype=np.float32))
    assert idx[0] == OFFSET
    assert idx[1] == 0  # the lowest magnitude code of the negative half
    assert idx[0] != idx[1]
    lo, hi = bin_bounds(idx)
    assert lo[0] == 0.0 and hi[0] > 0.0  # +0: [0, w)
    assert hi[1] == 0.0 and lo[1] < 0.0  # -0: (-w, -0]
    assert lo[1] == -hi[0]
    codes, counts, sums = histogram_from_values(np.array([0.0, -0.0, 0.0], dtype=np.float32))
    assert counts.tolist() == [1.0, 2.0]
    assert np.all(sums == 0.0)


def test_denormals_and_extremes():
    x = np.array([F32_DENORM, -F32_DENORM, 1e-40, -1e-40, F32_TINY, -F32_TINY, F32_MAX, -F32_MAX],
                 dtype=np.float32)
    idx = bin_indices(x)
    lo, hi = bin_bounds(idx)
    assert _contains(lo, hi, x.astype(np.float64)).all()
    # Denormal bins are linear, 2^15 denormal steps wide: the smallest share +0's bin.
    assert bin_indices(np.float32(F32_DENORM)) == bin_indices(np.float32(0.0))
    zero_lo, zero_hi = bin_bounds(np.array([OFFSET]))
    assert zero_lo[0] == 0.0 and zero_hi[0] == 2.0**-134
    # The largest finite bin is open-ended: its upper edge is the inf bit pattern.
    assert hi[6] == np.inf and lo[7] == -np.inf
    assert not is_nonfinite(idx).any()


def test_nonfinite_flagged():
    x = np.array([np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, F32_MAX, -F32_MAX], dtype=np.float32)
    flags = is_nonfinite(bin_indices(x))
    assert flags.tolist() == [True, True, True, True, False, False, False, False]
    codes, counts, sums = histogram_from_values(x)
    assert counts.sum() == x.size
    assert is_nonfinite(codes).sum() == len(np.unique(bin_indices(x[:4])))
    # Every finite bin of a finite sample is not flagged.
    assert not is_nonfinite(histogram_from_values(mixed_values(3))[0]).any()


def test_octaves_hold_256_bins_of_equal_width():
    for e in (-126, -20, -1, 0, 1, 7, 40, 127):
        lo_code = bin_indices(np.float32(2.0**e))
        codes = lo_code + np.arange(1 << MANTISSA_BITS)
        lo, hi = bin_bounds(codes)
        width = 2.0 ** (e - MANTISSA_BITS)
        assert lo[0] == 2.0**e
        if e < 127:
            assert hi[-1] == 2.0 ** (e + 1)
            np.testing.assert_array_equal(hi - lo, width)
        np.testing.assert_array_equal(lo, 2.0**e + width * np.arange(1 << MANTISSA_BITS))


@pytest.mark.parametrize("seed", [0, 1])
def test_edges_are_multiples_of_the_bin_width(seed):
    x = mixed_values(seed)
    lo, hi = bin_bounds(np.unique(bin_indices(x)))
    finite = np.isfinite(lo) & np.isfinite(hi)
    lo, hi = lo[finite], hi[finite]
    width = hi - lo
    # Widths are powers of two (2^(e-8) in normal octaves, 2^-134 for denormals).
    m, _ = np.frexp(width)
    assert np.all(m == 0.5)
    for edge in (lo, hi):
        ratio = edge / width
        assert np.all(ratio == np.round(ratio)), edge[ratio != np.round(ratio)][:5]


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n_bits", [2, 4, 6, 8])
def test_power_of_two_quantizer_boundaries_fall_on_bin_edges(n_bits, signed):
    """Every level and rounding boundary of a power-of-two quantizer (<= 8 bits) is a bin edge."""
    for k in (-100, -12, -3, 0, 1, 5, 20, 100):
        t = 2.0**k
        step = t / 2 ** (n_bits - 1) if signed else t / 2**n_bits
        j_max = 2 ** (n_bits - 1) - 1 if signed else 2**n_bits - 1
        j = np.arange(1, j_max + 1, dtype=np.float64)
        points = np.concatenate((j * step, (j - 0.5) * step, [(j_max + 0.5) * step]))
        for sign in (1.0, -1.0) if signed else (1.0,):
            p = (sign * points).astype(np.float32)
            assert np.all(p.astype(np.float64) == sign * points)  # exactly representable
            lo, hi = bin_bounds(bin_indices(p))
            edge = lo if sign > 0 else hi  # the value sits on the bin's inner edge
            np.testing.assert_array_equal(edge, sign * points)
            # ... so no bin straddles it: the value just below/above is in another bin.
            below = np.nextafter(p, np.float32(0.0))
            assert np.all(bin_indices(below) != bin_indices(p))


@pytest.mark.parametrize("seed", [0, 1])
def test_bin_sums_from_dropped_bits_are_exactly_rounded(seed):
    """count * base + (sum of dropped bits) * ulp is the exact bin sum, rounded once: what
    math.fsum gives on the raw values, for normals, subnormals and both signs."""
    x = mixed_values(seed)
    x = x[np.isfinite(x)]
    idx = bin_indices(x)
    codes, inverse = np.unique(idx, return_inverse=True)
    low = x.view(np.int32).astype(np.int64) & LOW_BITS_MASK
    counts = np.bincount(inverse, minlength=len(codes))
    low_sums = np.bincount(inverse, weights=low, minlength=len(codes)).astype(np.int64)
    got = bin_sums(codes, counts, low_sums)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(x[order].astype(np.float64), np.cumsum(counts)[:-1])
    want = np.array([math.fsum(g) for g in groups])
    np.testing.assert_array_equal(got, want)


def test_packed_cells_unpack_to_counts_and_bit_sums():
    """A cell sums each value's bit pattern plus 2^PACK_SHIFT; division by the bin's unit
    recovers count and dropped bits, even at the largest bin code and the unpack limit."""
    low = np.array([0, LOW_BITS_MASK, 12345, 7], dtype=np.int64)
    for code in (0, 1 << 16, NUM_BINS - 1):
        patterns = (code << SHIFT) | low  # the values' 32-bit patterns in this bin
        cell = int(np.sum(patterns + (1 << PACK_SHIFT)))
        counts, bits = unpack(np.array([cell, 0]), np.array([code, code]))
        assert counts.tolist() == [4, 0] and bits.tolist() == [int(low.sum()), 0]
    worst = MAX_PACKED_VALUES * int(pack_unit(NUM_BINS - 1) + LOW_BITS_MASK)
    assert worst < 2**63
    counts, bits = unpack(np.array([worst]), np.array([NUM_BINS - 1]))
    assert counts.tolist() == [MAX_PACKED_VALUES] and bits.tolist() == [MAX_PACKED_VALUES * LOW_BITS_MASK]
