"""Calibrators on distributions whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from rexport.calibration.observers import threshold
from rexport.calibration.stats import BINS, TensorStats
from rexport.errors import InputError


def stats_of(x: np.ndarray) -> TensorStats:
    top = float(np.abs(x).max())
    idx = np.minimum((np.abs(x) * (BINS / top)).astype(np.int64), BINS - 1)
    return TensorStats(float(x.min()), float(x.max()), np.bincount(idx, minlength=BINS))


@pytest.fixture(scope="module")
def gaussian_with_outliers():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.standard_normal(400_000), [40.0, -35.0]])  # two wild outliers


def test_minmax_is_the_absolute_maximum(gaussian_with_outliers):
    assert threshold(stats_of(gaussian_with_outliers), "minmax") == pytest.approx(40.0)


def test_percentile(gaussian_with_outliers):
    s = stats_of(gaussian_with_outliers)
    # 99.99th percentile of |N(0,1)| is 3.89; the histogram resolution is 40/2048
    assert threshold(s, "percentile", percentile=99.99) == pytest.approx(3.89, abs=0.05)
    assert threshold(s, "percentile", percentile=99.0) == pytest.approx(2.576, abs=0.03)
    with pytest.raises(InputError):
        threshold(s, "percentile", percentile=0)


def test_entropy_clips_outliers_but_keeps_the_bulk(gaussian_with_outliers):
    t = threshold(stats_of(gaussian_with_outliers), "entropy")
    assert 2.0 < t < 10.0  # far below the outliers, beyond the bulk of the distribution


def test_mse_trades_rounding_against_clipping(gaussian_with_outliers):
    # two outliers at 40 carry squared errors that rival 400k rounding errors: MSE clips, but less
    t = threshold(stats_of(gaussian_with_outliers), "mse")
    assert 4.0 < t < 35.0


def test_entropy_is_not_fooled_by_a_relu_spike_at_zero():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal(400_000) * 2, 0)  # half exact zeros, like a ReLU output
    t_relu = threshold(stats_of(x), "entropy")
    t_plain = threshold(stats_of(np.abs(rng.standard_normal(200_000) * 2)), "entropy")
    assert t_relu == pytest.approx(t_plain, rel=0.25)


def test_mse_matches_a_brute_force_search():
    x = np.random.default_rng(1).laplace(size=200_000)
    s = stats_of(x)
    t = threshold(s, "mse")

    def err(th):
        scale = th / 127
        return np.mean((np.abs(x) - np.minimum(np.round(np.abs(x) / scale), 127) * scale) ** 2)

    grid = np.linspace(s.absmax / 64, s.absmax, 256)
    best = grid[np.argmin([err(g) for g in grid])]
    assert err(t) <= err(best) * 1.05


def test_all_zero_tensor_gets_a_positive_threshold():
    s = TensorStats(0.0, 0.0, np.zeros(BINS, np.int64))
    for method in ("minmax", "percentile", "entropy", "mse"):
        assert threshold(s, method) > 0


def test_unknown_method():
    with pytest.raises(InputError, match="calibration method"):
        threshold(TensorStats(0, 1, np.ones(BINS)), "kl")
