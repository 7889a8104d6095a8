"""An independent brute-force threshold search on raw values (the tests' ground truth).

Nothing here imports ``quantlens.core``: the quantizer, the candidate sets, the z-score
outlier removal and the error methods are written again from the contract (MCT's
power-of-two/symmetric quantizer), directly on the values, with no histogram and no
prefix sums, so that a bug in the core cannot be mirrored here.

Contract:

* signed:   step = t / 2^(n-1), integer levels j in [-2^(n-1), 2^(n-1) - 1];
* unsigned: step = t / 2^n,     integer levels j in [0, 2^n - 1];
* Q(x) = clip(round(x / step)) * step (round half to even);
* signed iff the (kept) data has a value < 0;
* z-score removal drops |x - mean| > z * std (population std) before the search;
* power-of-two candidates: 2^k for k = K, K-1, ..., K-16 where K = ceil(log2 max|x|);
  free candidates: max|x| * 2^(-i/16), i = 0..256; largest first; [1.0] for max|x| == 0;
* NOCLIPPING: the smallest candidate >= max|x|; MSE/MAE/LP: mean |Q(x) - x|^p (p = 2, 1, p);
* ties within a relative 1e-9 of the best go to the largest threshold (the first candidate);
* KL (see :func:`kl_divergence`): the integral of p log(p / q) between the float-bits
  histogram P (bins narrower than 2^(floor(log2 t) - n - 2) merged into a grid of that width)
  and Q (each level's count of quantized values spread uniformly over the level's cell
  within P's extent, plus one pseudo-sample spread over the extent, normalised to one).
"""

from __future__ import annotations

import math

import numpy as np

TIE_RTOL = 1e-9
OCTAVES = 16
FREE_STEPS_PER_OCTAVE = 16

_METHOD_P = {"MSE": 2.0, "MAE": 1.0}


def _method_name(method) -> str:
    """Accept a plain string or any str-valued enum (e.g. ErrorMethod) without importing it."""
    return str(getattr(method, "value", method)).upper()


def as_values(x) -> np.ndarray:
    """The finite values as the histogram sees them: cast to float32, then held as float64."""
    v = np.ravel(np.asarray(x)).astype(np.float32).astype(np.float64)
    return v[np.isfinite(v)]


def remove_outliers(v: np.ndarray, z: float) -> np.ndarray:
    """Keep |x - mean| <= z * std (population std), computed with numpy's two-pass formulas."""
    if not math.isfinite(z) or v.size == 0:
        return v
    mu = float(np.mean(v))
    sd = float(np.std(v))
    return v[np.abs(v - mu) <= z * sd]


def is_signed(v: np.ndarray) -> bool:
    return bool(np.any(v < 0))


def max_abs_of(v: np.ndarray, signed: bool) -> float:
    if v.size == 0:
        return 0.0
    return float(np.max(np.abs(v))) if signed else max(float(np.max(v)), 0.0)


def ceil_log2(a: float) -> int:
    """ceil(log2(a)) for a > 0, exactly (via frexp, not a floating-point log)."""
    m, e = math.frexp(a)  # a = m * 2^e, 0.5 <= m < 1
    return e - 1 if m == 0.5 else e


def candidates_for(max_abs: float, power_of_two: bool = True) -> np.ndarray:
    if not (max_abs > 0) or not math.isfinite(max_abs):
        return np.array([1.0])
    if power_of_two:
        k = ceil_log2(max_abs)
        return np.array([math.ldexp(1.0, k - i) for i in range(OCTAVES + 1)])
    i = np.arange(OCTAVES * FREE_STEPS_PER_OCTAVE + 1, dtype=np.float64)
    return max_abs * 2.0 ** (-i / FREE_STEPS_PER_OCTAVE)


def quantize(v: np.ndarray, threshold: float, n_bits: int, signed: bool) -> np.ndarray:
    """MCT's uniform symmetric quantizer, written out level by level."""
    if signed:
        step = threshold / 2.0 ** (n_bits - 1)
        j_lo, j_hi = -(2 ** (n_bits - 1)), 2 ** (n_bits - 1) - 1
    else:
        step = threshold / 2.0**n_bits
        j_lo, j_hi = 0, 2**n_bits - 1
    j = np.rint(np.asarray(v, dtype=np.float64) / step)
    return np.clip(j, j_lo, j_hi) * step


def lp_error(v: np.ndarray, threshold: float, n_bits: int, signed: bool, p: float) -> float:
    """Mean |Q(x) - x|^p over the values (0 for no values)."""
    if v.size == 0:
        return 0.0
    d = np.abs(quantize(v, threshold, n_bits, signed) - v)
    if p == 2.0:
        return float(np.mean(d * d))
    if p == 1.0:
        return float(np.mean(d))
    return float(np.mean(d**p))


def argmin_prefer_large(errors: np.ndarray) -> int:
    best = float(np.min(errors))
    return int(np.flatnonzero(errors <= best + TIE_RTOL * abs(best) + 1e-300)[0])


def brute_force_threshold(
    x,
    method,
    n_bits: int = 8,
    p: float = 2.0,
    z: float = math.inf,
    power_of_two: bool = True,
    signed: bool | None = None,
) -> tuple[float, np.ndarray, np.ndarray]:
    """(threshold, candidates, errors) of a search done directly on the raw values.

    ``errors`` is the MSE curve for NOCLIPPING (as the core reports it), the method's error
    otherwise. ``signed`` None means from the kept data.
    """
    name = _method_name(method)
    v = remove_outliers(as_values(x), z)
    s = is_signed(v) if signed is None else signed
    m = max_abs_of(v, s)
    cands = candidates_for(m, power_of_two)
    if name == "NOCLIPPING":
        errors = np.array([lp_error(v, t, n_bits, s, 2.0) for t in cands])
        covering = np.flatnonzero(cands >= m)
        idx = int(covering[-1]) if len(covering) else 0
        return float(cands[idx]), cands, errors
    if name == "KL":
        errors = np.array([kl_divergence(v, t, n_bits, s) for t in cands])
        return float(cands[argmin_prefer_large(errors)]), cands, errors
    if name == "LP":
        power = float(p)
    elif name in _METHOD_P:
        power = _METHOD_P[name]
    else:
        raise ValueError(f"no brute-force reference for {name}")
    errors = np.array([lp_error(v, t, n_bits, s, power) for t in cands])
    return float(cands[argmin_prefer_large(errors)]), cands, errors


def float_bits_bins(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's bin [lo, hi): its float32 magnitude with the low 15 mantissa bits cleared,
    and the next such pattern (mirrored for negative values, -0.0 included)."""
    f = np.abs(np.asarray(v, dtype=np.float32))
    code = (f.view(np.uint32) >> np.uint32(15)).astype(np.uint32)
    low = (code << np.uint32(15)).view(np.float32).astype(np.float64)
    high = ((code + np.uint32(1)) << np.uint32(15)).view(np.float32).astype(np.float64)
    negative = np.signbit(np.asarray(v, dtype=np.float32))
    return np.where(negative, -high, low), np.where(negative, -low, high)


def kl_divergence(v: np.ndarray, threshold: float, n_bits: int, signed: bool) -> float:
    """KL of one candidate, integrated piece by piece over the common refinement of P's bins
    and Q's cells (p and q are constant on each piece); level counts come from quantizing
    every value (half-way values go away from zero, see below)."""
    resolution = math.ldexp(1.0, math.frexp(threshold)[1] - 1 - (n_bits + 2))
    lo, hi = float_bits_bins(v)
    narrow = (hi - lo) < resolution
    lo = np.where(narrow, np.floor(lo / resolution) * resolution, lo)
    hi = np.where(narrow, lo + resolution, hi)
    bins, counts = np.unique(np.stack((lo, hi), axis=1), axis=0, return_counts=True)
    total = float(v.size)
    p_density = counts / total / (bins[:, 1] - bins[:, 0])
    vmin, vmax = float(bins[0, 0]), float(bins[-1, 1])
    prior = 1.0 / ((vmax - vmin) * total)
    step = threshold / 2.0 ** (n_bits - 1) if signed else threshold / 2.0**n_bits
    j_lo = -(2 ** (n_bits - 1)) if signed else 0
    j_hi = 2 ** (n_bits - 1) - 1 if signed else 2**n_bits - 1
    # A value on a cell boundary counts to the level farther from zero: the histogram's bin
    # of a value starts at it (ends at it, for negatives), so its mass lies on that side.
    levels = np.clip(np.sign(v) * np.floor(np.abs(v) / step + 0.5), j_lo, j_hi).astype(np.int64)
    level_mass = np.bincount(levels - j_lo, minlength=j_hi - j_lo + 1) / total
    cell_edges = (np.arange(j_lo, j_hi + 2) - 0.5) * step
    support = np.diff(np.clip(cell_edges, vmin, vmax))
    q_in_cell = np.where(support > 0, level_mass / np.where(support > 0, support, 1.0), 0.0)
    edges = np.unique(np.concatenate((bins.ravel(), cell_edges)))
    edges = edges[(edges >= vmin) & (edges <= vmax)]
    mid, length = 0.5 * (edges[:-1] + edges[1:]), np.diff(edges)
    in_bin = np.searchsorted(bins[:, 0], mid, side="right") - 1
    covered = (in_bin >= 0) & (mid < bins[np.maximum(in_bin, 0), 1])
    cell = np.searchsorted(cell_edges, mid, side="right") - 1
    in_cells = (cell >= 0) & (cell <= j_hi - j_lo)
    q = prior + np.where(in_cells, q_in_cell[np.clip(cell, 0, j_hi - j_lo)], 0.0)
    q = q / (1.0 + 1.0 / total)
    p = np.where(covered, p_density[np.maximum(in_bin, 0)], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pieces = np.where(p > 0, p * length * np.log(p / q), 0.0)
    return max(float(pieces.sum()), 0.0)


def sqnr_db(x, q) -> float:
    """20 * log10(||x|| / ||x - q||); inf when q == x, -inf when x == 0 != q."""
    x = np.asarray(x, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    signal = float(np.linalg.norm(x))
    noise = float(np.linalg.norm(x - q))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 20.0 * math.log10(signal / noise)
