"""Calibrators: from a tensor's statistics to the threshold T that maps to the largest
quantized value (dynamic range [-T, T] for int8, [0, T] or [max(min, -T), min(max, T)] for uint8).

- minmax:     T = max|x|. Keeps every value; outliers stretch the scale.
- percentile: T = the p-th percentile of |x| (default 99.99).
- entropy:    TensorRT's entropy calibration: the T whose 128-level quantized distribution has
              the smallest KL divergence from the observed one.
- mse:        the T that minimises the expected squared quantize-dequantize error.
"""

from __future__ import annotations

import numpy as np

from rexport.calibration.stats import BINS, TensorStats
from rexport.errors import InputError

METHODS = ("minmax", "percentile", "entropy", "mse")


def threshold(stats: TensorStats, method: str, *, percentile: float = 99.99, levels: int = 127) -> float:
    """The clipping threshold for |x| (> 0), for `levels` positive quantization steps."""
    if method not in METHODS:
        raise InputError(f"calibration method must be one of {', '.join(METHODS)}, not {method!r}")
    if stats.absmax == 0:
        return 1e-8  # an all-zero tensor: any positive scale represents it exactly
    if method == "minmax":
        return stats.absmax
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise InputError(f"percentile must be in (0, 100], not {percentile}")
        return _percentile(stats, percentile)
    if method == "entropy":
        return _entropy(stats, 128)
    return _mse(stats, levels)


def _percentile(stats: TensorStats, p: float) -> float:
    cdf = np.cumsum(stats.hist) / max(1, stats.hist.sum())
    i = int(np.searchsorted(cdf, p / 100.0))
    return min(stats.absmax, (i + 1) * stats.bin_width)


def _entropy(stats: TensorStats, target_bins: int) -> float:
    """KL-divergence threshold search over the |x| histogram, as in TensorRT's calibrator."""
    hist = stats.hist.astype(np.float64)
    # Exact zeros (most of a ReLU output) are representable at any scale; their spike in the
    # first bin would otherwise dominate the divergence (NVIDIA's pytorch-quantization does the same).
    hist[0] = hist[1]
    if np.count_nonzero(hist) == 0:
        return stats.absmax
    best_i, best_kl = BINS, np.inf
    for i in range(target_bins, BINS + 1, max(1, (BINS - target_bins) // 256)):  # ~256 candidates
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # clip the outliers into the last bin
        if p.sum() == 0:
            continue
        # quantize the first i bins of the *unclipped* histogram into target_bins, then expand
        ref = hist[:i]
        edges = np.linspace(0, i, target_bins + 1)
        group = np.minimum(np.searchsorted(edges, np.arange(i), side="right") - 1, target_bins - 1)
        sums = np.bincount(group, weights=ref, minlength=target_bins)
        nonzero = np.bincount(group, weights=(ref > 0).astype(np.float64), minlength=target_bins)
        q = np.where(ref > 0, sums[group] / np.maximum(nonzero[group], 1), 0.0)
        kl = _kl(p, q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return min(stats.absmax, (best_i + 0.5) * stats.bin_width)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    qs = q.sum()
    if qs == 0:
        return np.inf
    q = q / qs
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _mse(stats: TensorStats, levels: int) -> float:
    hist = stats.hist.astype(np.float64)
    centers = (np.arange(BINS) + 0.5) * stats.bin_width
    candidates = np.linspace(stats.absmax / 64, stats.absmax, 256)
    best_t, best_err = stats.absmax, np.inf
    for t in candidates:
        scale = t / levels
        q = np.minimum(np.round(centers / scale), levels) * scale
        err = float(np.sum(hist * (centers - q) ** 2))
        if err < best_err:
            best_err, best_t = err, float(t)
    return best_t
