"""The samples a verdict test compares, one value per unit (finite sequence values, prompt means
when clustered, prompts paired across engines) and the bootstrap interval and t-test p-value of a
mean or of a difference of means."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

__all__ = [
    "DEFAULT_N_RESAMPLES",
    "Unit",
    "bootstrap_ci",
    "cluster_means",
]

Unit = Literal["sequence", "prompt"]

DEFAULT_N_RESAMPLES = 2000
# Resamples are drawn in batches so BCa's jackknife stays ~batch x n floats, not n x n.
_BATCH = 256


def _finite(values: np.ndarray) -> tuple[np.ndarray, int]:
    """The finite entries of a 1-D array and how many were dropped (NaN marks an empty sequence)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    keep = np.isfinite(x)
    return x[keep], int(x.size - keep.sum())


def cluster_means(values: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the finite values of each cluster (e.g. the n samples of one prompt).

    means[k] = mean{values[i] : clusters[i] == ids[k], values[i] finite}. Clusters with no finite
    value are dropped. Order is stable: clusters in order of their first finite value.

    Args:
        values: 1-D per-sequence values.
        clusters: 1-D cluster id of each value (any sortable type: prompt index, prompt text).

    Returns:
        (ids, means): the cluster ids kept and their means, both of one length.

    Raises:
        ValueError: if values and clusters differ in length.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    g = np.asarray(clusters).ravel()
    if g.shape != x.shape:
        raise ValueError(f"{x.size} values but {g.size} cluster ids")
    keep = np.isfinite(x)
    x, g = x[keep], g[keep]
    if x.size == 0:
        return g[:0], np.zeros(0)
    ids, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    sums = np.bincount(inverse, weights=x, minlength=ids.size)
    counts = np.bincount(inverse, minlength=ids.size)
    order = np.argsort(first, kind="stable")
    return ids[order], (sums / counts)[order]


@dataclass(frozen=True)
class Design:
    """The two samples a test compares, after clustering/pairing, and how they were built."""

    base: np.ndarray  # per unit; aligned with cand when paired
    cand: np.ndarray
    unit: Unit
    paired: bool
    note: str  # what was dropped, for the reason line

    def describe(self) -> str:
        """A reason suffix naming the design, '' for the default (independent sequences)."""
        if self.paired:
            return f" [paired by prompt, {self.cand.size} prompts]"
        if self.unit == "prompt":
            return f" [prompt means: {self.base.size} base, {self.cand.size} cand prompts]"
        return ""


def one_side(values: np.ndarray, clusters: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Finite per-sequence values, or per-cluster means; and how many sequence values were dropped."""
    x, dropped = _finite(values)
    if clusters is None:
        return x, dropped
    return cluster_means(values, clusters)[1], dropped


def design(
    base: np.ndarray,
    cand: np.ndarray,
    paired: bool,
    base_clusters: np.ndarray | None,
    cand_clusters: np.ndarray | None,
) -> Design:
    """Build the per-unit samples of a two-sample test (see non_inferiority for the rules)."""
    if (base_clusters is None) != (cand_clusters is None):
        raise ValueError("give base_clusters and cand_clusters together (or neither)")
    clustered = base_clusters is not None
    if not paired:
        b, drop_b = one_side(base, base_clusters)
        c, drop_c = one_side(cand, cand_clusters)
        return Design(
            b, c, "prompt" if clustered else "sequence", False, dropped_note(drop_b, drop_c)
        )
    if clustered:
        ids_b, mean_b = cluster_means(base, base_clusters)
        ids_c, mean_c = cluster_means(cand, cand_clusters)
        pos_c = {k: i for i, k in enumerate(ids_c.tolist())}
        both = [(i, pos_c[k]) for i, k in enumerate(ids_b.tolist()) if k in pos_c]
        ib = np.array([i for i, _ in both], dtype=np.int64)
        ic = np.array([j for _, j in both], dtype=np.int64)
        b, c = mean_b[ib], mean_c[ic]
        only = [(ids_b.size - ib.size, "base-only"), (ids_c.size - ic.size, "cand-only")]
    else:
        b = np.asarray(base, dtype=np.float64).ravel()
        c = np.asarray(cand, dtype=np.float64).ravel()
        if b.shape != c.shape:
            raise ValueError(
                f"paired without clusters needs aligned arrays: base {b.size}, cand {c.size}"
            )
        keep = np.isfinite(b) & np.isfinite(c)
        b, c = b[keep], c[keep]
        only = [(int(keep.size - keep.sum()), "non-finite")]
    parts = [f"{n} {what}" for n, what in only if n]
    note = f" ({' and '.join(parts)} prompts dropped)" if parts else ""
    return Design(b, c, "prompt", True, note)


def dropped_note(n_dropped_base: int, n_dropped_cand: int) -> str:
    """A reason suffix naming non-finite values that were dropped, or ''."""
    parts = [f"{n} {side}" for n, side in ((n_dropped_base, "base"), (n_dropped_cand, "cand")) if n]
    return f" ({' and '.join(parts)} non-finite values dropped)" if parts else ""


def mean_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Vectorised one-sample statistic for scipy.stats.bootstrap."""
    return np.mean(x, axis=axis)


def _diff_stat(base: np.ndarray, cand: np.ndarray, axis: int = -1) -> np.ndarray:
    """Vectorised two-sample statistic for scipy.stats.bootstrap: mean(cand) - mean(base)."""
    return np.mean(cand, axis=axis) - np.mean(base, axis=axis)


def bootstrap(
    samples: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    confidence: float,
    n_resamples: int,
    seed: int,
) -> tuple[float, float]:
    """BCa bootstrap interval (independent resampling of each sample), robust to degenerate data.

    All-constant samples give the point interval (v, v). Where BCa cannot be computed (scipy
    returns NaN for some degenerate shapes, e.g. one constant sample), the percentile interval
    of the same seed is used instead.
    """
    if all(np.ptp(s) == 0 for s in samples):
        v = float(statistic(*samples))
        return v, v
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            # DegenerateDataWarning / divide warnings: handled by the percentile fallback.
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                samples,
                statistic,
                n_resamples=n_resamples,
                batch=_BATCH,
                vectorized=True,
                paired=False,
                axis=-1,
                confidence_level=confidence,
                method=method,
                rng=np.random.default_rng(seed),
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            return low, high
    return float("nan"), float("nan")


def _welch_p(base: np.ndarray, cand: np.ndarray, shift: float, alternative: str) -> float:
    """One-sided Welch p-value for H1: mean(cand) - mean(base) {<, >} shift.

    With both samples constant the t statistic is +-inf (or 0/0): the p-value is then 0 when
    the observed difference lies strictly on H1's side, else 1.
    """
    if np.ptp(base) == 0 and np.ptp(cand) == 0:
        d = float(np.mean(cand) - np.mean(base)) - shift
        on_h1 = d < 0 if alternative == "less" else d > 0
        return 0.0 if on_h1 else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(cand - shift, base, equal_var=False, alternative=alternative)
    return float(res.pvalue)


def one_sample_p(x: np.ndarray, null: float, alternative: str) -> float:
    """One-sided one-sample t-test p-value for H1: mean(x) {<, >} null (0/1 for constant x)."""
    if np.ptp(x) == 0:
        d = float(np.mean(x)) - null
        on_h1 = d < 0 if alternative == "less" else d > 0
        return 0.0 if on_h1 else 1.0
    return float(stats.ttest_1samp(x, null, alternative=alternative).pvalue)


def diff_ci(
    design: Design, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float, float]:
    """(d, lo, hi): d = mean(cand) - mean(base) and its bootstrap interval.

    Paired: a one-sample bootstrap of the per-prompt differences cand - base; otherwise the two
    samples are resampled independently.
    """
    b, c = design.base, design.cand
    if design.paired:
        diff = c - b
        return float(np.mean(diff)), *bootstrap((diff,), mean_stat, confidence, n_resamples, seed)
    return float(np.mean(c) - np.mean(b)), *bootstrap(
        (b, c), _diff_stat, confidence, n_resamples, seed
    )


def diff_p(design: Design, shift: float, alternative: str) -> float:
    """One-sided p-value for H1: d {<, >} shift; one-sample t on cand - base when paired, else Welch."""
    if design.paired:
        return one_sample_p(design.cand - design.base, shift, alternative)
    return _welch_p(design.base, design.cand, shift, alternative)


def bootstrap_ci(
    values: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = 0,
    *,
    clusters: np.ndarray | None = None,
) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean (BCa, percentile where BCa is degenerate).

    Interval [low, high] with P(low <= E[X] <= high) ~= confidence, from scipy.stats.bootstrap;
    the same seed gives the same interval. Non-finite values are dropped first. With clusters,
    the interval is that of the mean of cluster means, resampling clusters.

    Args:
        values: 1-D sample, e.g. one per-sequence metric.
        confidence: two-sided coverage in (0, 1).
        n_resamples: bootstrap resamples.
        seed: seed of the resampling generator.
        clusters: cluster id (e.g. prompt) of each value, or None for independent values.

    Returns:
        (low, high); (v, v) for a constant sample; (NaN, NaN) with fewer than 2 finite values
        (clusters, when given).
    """
    x, _ = one_side(values, clusters)
    if x.size < 2:
        return float("nan"), float("nan")
    return bootstrap((x,), mean_stat, confidence, n_resamples, seed)
