"""Statistics the metrics share: Jensen–Shannon divergence, histograms on a grid, Pearson r and decorrelation time."""

from __future__ import annotations

import math

import numpy as np


def jensen_shannon(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
    """Jensen–Shannon divergence (base 2, in 0..1) between weights normalised along ``axis``.

    Args:
        p, q: non-negative arrays of the same shape (histogram counts or frequencies).
    Returns:
        the divergence with ``axis`` removed; NaN where p or q sums to 0.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    sp, sq = p.sum(axis, keepdims=True), q.sum(axis, keepdims=True)
    bad = (np.squeeze(sp, axis) <= 0) | (np.squeeze(sq, axis) <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p, q = p / sp, q / sq
        m = 0.5 * (p + q)
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis)
    return np.where(bad, np.nan, np.clip(0.5 * (kl_p + kl_q), 0.0, 1.0))


def binned(values: np.ndarray, edges: list[np.ndarray], weights: np.ndarray | None = None) -> np.ndarray:
    """Histogram counts of K variables on a regular D-dimensional grid.

    Args:
        values: (F, K, D) F samples of K variables with D coordinates each
            (D = 1 for torsions, 2 for TICA projections).
        edges: D increasing arrays of bin edges; values outside fall in the edge bins.
        weights: optional (F,) non-negative per-sample weights; None counts every sample once.
    Returns:
        (K, B_1 * ... * B_D) int64 counts, the last dimension varying fastest; with ``weights``,
        float64 sums of the weights of the samples in each bin.
    """
    n_frames, n_vars, _ = values.shape
    flat = np.zeros((n_frames, n_vars), dtype=np.int64)
    size = 1
    for d, e in enumerate(edges):
        nb = len(e) - 1
        flat = flat * nb + np.clip(np.searchsorted(e, values[..., d], side="right") - 1, 0, nb - 1)
        size *= nb
    flat += np.arange(n_vars) * size
    per_value = None if weights is None else np.repeat(np.asarray(weights, dtype=np.float64), n_vars)
    return np.bincount(flat.ravel(), weights=per_value, minlength=n_vars * size).reshape(n_vars, size)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """Lower weighted median of (F,) values with (F,) non-negative weights (not all 0).

    The smallest value whose cumulative weight (values sorted ascending) reaches half the total;
    all weight on one sample gives that sample's value. For an even number of equal weights this
    is the lower of the two middle values, not their mean as :func:`numpy.median` gives.
    """
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(np.asarray(weights, dtype=np.float64)[order])
    return float(np.asarray(values)[order][np.searchsorted(cum, 0.5 * cum[-1])])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two arrays (flattened); NaN when either is constant."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else math.nan


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman ρ of two arrays (flattened): Pearson r of their ranks (ties share the mean rank); NaN when
    either is constant."""
    from scipy.stats import rankdata

    return pearson(rankdata(np.ravel(a)), rankdata(np.ravel(b)))


def decorrelation_time(series: list[np.ndarray], dt_ps: float) -> float:
    """1/e time of the autocorrelation of a scalar observable.

    Args:
        series: per trajectory, (F_s,) values; the autocorrelation pools all
            trajectories around their common mean and variance.
        dt_ps: time between frames.
    Returns:
        first lag (ps, linearly interpolated) where the autocorrelation falls
        below 1/e, searched up to half the longest trajectory; NaN if it does
        not, or if the observable is constant.
    """
    pooled = np.concatenate(series)
    mean, var = pooled.mean(), pooled.var()
    if var <= 1e-12 * max(1.0, float(mean * mean)):
        return math.nan
    n_max = max(len(s) for s in series)
    num, cnt = np.zeros(n_max), np.zeros(n_max)
    for s in series:
        y = s - mean
        spec = np.fft.rfft(y, 2 * len(y))
        num[:len(y)] += np.fft.irfft(spec * spec.conj(), 2 * len(y))[:len(y)]
        cnt[:len(y)] += np.arange(len(y), 0, -1)
    acf = num[: max(2, n_max // 2)] / cnt[: max(2, n_max // 2)] / var
    below = np.flatnonzero(acf < 1.0 / math.e)
    if len(below) == 0:
        return math.nan
    t = int(below[0])
    return (t - 1 + (acf[t - 1] - 1.0 / math.e) / (acf[t - 1] - acf[t])) * dt_ps


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size 1 / Σ w_i² of (K,) weights that sum to 1: between 1 and K."""
    return float(1.0 / np.square(weights).sum())


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """Indices of at most ``k`` evenly spaced items of ``n``, first and last included, ascending."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).astype(int))
