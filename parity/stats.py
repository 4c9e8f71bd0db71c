"""Verdict statistics over per-sequence values: bootstrap CIs, non-inferiority, TOST, thresholds.

Each test returns a three-valued TestResult (pass / fail / inconclusive), never a bare boolean.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_N",
    "DEFAULT_N_RESAMPLES",
    "TestResult",
    "bootstrap_ci",
    "equivalence_tost",
    "non_inferiority",
    "threshold",
]

Kind = Literal["non_inferiority", "equivalence", "threshold"]
Outcome = Literal["pass", "fail", "inconclusive"]

# One-sided error rate of every test: a 5% chance of passing a candidate that is in fact beyond
# the margin. The interval that decides is the two-sided (1 - 2*alpha) = 90% one, whose ends are
# one-sided 95% bounds.
DEFAULT_ALPHA = 0.05
# Bootstrap intervals of a mean undercover badly on a handful of points (and BCa's jackknife is
# unstable there); below 20 sequences per side a verdict is reported as inconclusive.
DEFAULT_MIN_N = 20
DEFAULT_N_RESAMPLES = 2000
# Resamples are drawn in batches so BCa's jackknife stays ~batch x n floats, not n x n.
_BATCH = 256


@dataclass(frozen=True)
class TestResult:
    """The outcome of one verdict test, with everything needed to report it.

    Attributes:
        kind: "non_inferiority", "equivalence" or "threshold".
        outcome: "pass", "fail" or "inconclusive".
        estimate: mean(cand) - mean(base) for two-sample tests; mean(values) for threshold.
        ci_low: lower end of the (confidence) bootstrap interval of the estimate (NaN if none).
        ci_high: upper end of it.
        confidence: two-sided coverage of [ci_low, ci_high], 1 - 2*alpha.
        margin: the non-inferiority / equivalence margin, or the limit for threshold.
        p_value: Welch's (or one-sample) t-test p-value of the null the test tries to reject.
        n_base: finite per-sequence values used from the baseline (0 for threshold).
        n_cand: finite per-sequence values used from the candidate (or `values` for threshold).
        reason: one line saying why the outcome is what it is.
    """

    __test__ = False  # its name starts with "Test"; keep pytest from collecting it

    kind: Kind
    outcome: Outcome
    estimate: float
    ci_low: float
    ci_high: float
    confidence: float
    margin: float
    p_value: float
    n_base: int
    n_cand: int
    reason: str

    def to_dict(self) -> dict[str, object]:
        """The fields as a plain dict (floats may be NaN; the report writer decides their spelling).

        Returns:
            {field name: value} for every field.
        """
        return asdict(self)


def _finite(values: np.ndarray) -> tuple[np.ndarray, int]:
    """The finite entries of a 1-D array and how many were dropped (NaN marks an empty sequence)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    keep = np.isfinite(x)
    return x[keep], int(x.size - keep.sum())


def _mean_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Vectorised one-sample statistic for scipy.stats.bootstrap."""
    return np.mean(x, axis=axis)


def _diff_stat(base: np.ndarray, cand: np.ndarray, axis: int = -1) -> np.ndarray:
    """Vectorised two-sample statistic for scipy.stats.bootstrap: mean(cand) - mean(base)."""
    return np.mean(cand, axis=axis) - np.mean(base, axis=axis)


def _bootstrap(
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


def _check(alpha: float, min_n: int, n_resamples: int) -> None:
    """Reject settings that make a test meaningless."""
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if min_n < 2:
        raise ValueError(f"min_n must be >= 2 (a variance needs two values), got {min_n}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


def _dropped_note(n_dropped_base: int, n_dropped_cand: int) -> str:
    """A reason suffix naming non-finite values that were dropped, or ''."""
    parts = [f"{n} {side}" for n, side in ((n_dropped_base, "base"), (n_dropped_cand, "cand")) if n]
    return f" ({' and '.join(parts)} non-finite values dropped)" if parts else ""


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


def bootstrap_ci(
    values: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean (BCa, percentile where BCa is degenerate).

    Interval [low, high] with P(low <= E[X] <= high) ~= confidence, from scipy.stats.bootstrap;
    the same seed gives the same interval. Non-finite values are dropped first.

    Args:
        values: 1-D sample, e.g. one per-sequence metric.
        confidence: two-sided coverage in (0, 1).
        n_resamples: bootstrap resamples.
        seed: seed of the resampling generator.

    Returns:
        (low, high); (v, v) for a constant sample; (NaN, NaN) with fewer than 2 finite values.
    """
    x, _ = _finite(values)
    if x.size < 2:
        return float("nan"), float("nan")
    return _bootstrap((x,), _mean_stat, confidence, n_resamples, seed)


def _too_few(
    kind: Kind,
    base: np.ndarray | None,
    cand: np.ndarray,
    margin: float,
    confidence: float,
    min_n: int,
    note: str,
) -> TestResult | None:
    """An inconclusive result if a side has fewer than min_n finite values, else None."""
    sides = [("cand", cand)] if base is None else [("base", base), ("cand", cand)]
    short = [f"{name} has {x.size}" for name, x in sides if x.size < min_n]
    if not short:
        return None
    if base is None:
        estimate = float(np.mean(cand)) if cand.size else float("nan")
    else:
        estimate = float(np.mean(cand) - np.mean(base)) if cand.size and base.size else float("nan")
    return TestResult(
        kind=kind,
        outcome="inconclusive",
        estimate=estimate,
        ci_low=float("nan"),
        ci_high=float("nan"),
        confidence=confidence,
        margin=float(margin),
        p_value=float("nan"),
        n_base=0 if base is None else int(base.size),
        n_cand=int(cand.size),
        reason=f"too few finite per-sequence values: {', '.join(short)} (< min_n={min_n}){note}",
    )


def non_inferiority(
    base: np.ndarray,
    cand: np.ndarray,
    margin: float,
    alpha: float = DEFAULT_ALPHA,
    min_n: int = DEFAULT_MIN_N,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = 0,
) -> TestResult:
    """Non-inferiority for a mismatch metric where higher is worse (KL, |dlogp|, clip rate).

    d = mean(cand) - mean(base);  H0: d >= margin  vs  H1: d < margin.
    [lo, hi] = (1 - 2*alpha) bootstrap CI of d (BCa, samples resampled independently), so hi
    is a one-sided (1 - alpha) upper bound. Outcome: pass if hi < margin; fail if lo > margin
    (d significantly above the margin); otherwise inconclusive. The CI decides; p_value is
    Welch's t-test of the same H0 (ttest_ind(cand - margin, base, alternative="less")), reported
    alongside, and agrees with the CI except near the boundary.

    Args:
        base: per-sequence values of the baseline engine; non-finite values are dropped.
        cand: per-sequence values of the candidate engine; non-finite values are dropped.
        margin: how much worse than the baseline the candidate may be, in the metric's unit.
        alpha: one-sided error rate (default 0.05, i.e. a 90% two-sided CI).
        min_n: fewest finite values per side for a verdict (default 20); fewer is inconclusive.
        n_resamples: bootstrap resamples (default 2000).
        seed: seed of the bootstrap; the same inputs and seed give the same result.

    Returns:
        TestResult with kind "non_inferiority".

    Raises:
        ValueError: if margin is not finite or alpha/min_n/n_resamples are out of range.
    """
    _check(alpha, min_n, n_resamples)
    if not np.isfinite(margin):
        raise ValueError(f"margin must be finite, got {margin}")
    b, drop_b = _finite(base)
    c, drop_c = _finite(cand)
    conf = 1.0 - 2.0 * alpha
    note = _dropped_note(drop_b, drop_c)
    early = _too_few("non_inferiority", b, c, margin, conf, min_n, note)
    if early is not None:
        return early
    d = float(np.mean(c) - np.mean(b))
    lo, hi = _bootstrap((b, c), _diff_stat, conf, n_resamples, seed)
    p = _welch_p(b, c, margin, "less")
    one_sided = f"{100 * (1 - alpha):g}%"
    if hi < margin:
        outcome, why = "pass", f"{one_sided} upper bound {hi:.4g} < margin {margin:.4g}"
    elif lo > margin:
        outcome, why = "fail", f"{one_sided} lower bound {lo:.4g} > margin {margin:.4g}"
    else:
        outcome, why = "inconclusive", f"{100 * conf:g}% CI [{lo:.4g}, {hi:.4g}] contains margin {margin:.4g}"
    return TestResult(
        kind="non_inferiority",
        outcome=outcome,
        estimate=d,
        ci_low=lo,
        ci_high=hi,
        confidence=conf,
        margin=float(margin),
        p_value=p,
        n_base=int(b.size),
        n_cand=int(c.size),
        reason=f"cand - base = {d:+.4g}; {why}{note}",
    )


def equivalence_tost(
    base: np.ndarray,
    cand: np.ndarray,
    margin: float,
    alpha: float = DEFAULT_ALPHA,
    min_n: int = DEFAULT_MIN_N,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = 0,
) -> TestResult:
    """Equivalence by two one-sided tests (TOST) for behaviour metrics (entropy, reward).

    d = mean(cand) - mean(base);  H0: |d| >= margin  vs  H1: -margin < d < margin.
    [lo, hi] = (1 - 2*alpha) bootstrap CI of d. Outcome: pass if -margin < lo and hi < margin
    (both one-sided tests reject at level alpha); fail if the CI lies entirely outside
    [-margin, margin] (hi < -margin or lo > margin); otherwise inconclusive.
    p_value = max(p_low, p_high), Welch's one-sided tests of H0: d <= -margin and H0: d >= margin.

    Args:
        base: per-sequence values of the baseline engine; non-finite values are dropped.
        cand: per-sequence values of the candidate engine; non-finite values are dropped.
        margin: largest difference that still counts as equivalent (> 0), in the metric's unit.
        alpha: error rate of each one-sided test (default 0.05, i.e. a 90% CI).
        min_n: fewest finite values per side for a verdict (default 20); fewer is inconclusive.
        n_resamples: bootstrap resamples (default 2000).
        seed: seed of the bootstrap.

    Returns:
        TestResult with kind "equivalence".

    Raises:
        ValueError: if margin is not finite and > 0, or alpha/min_n/n_resamples are out of range.
    """
    _check(alpha, min_n, n_resamples)
    if not (np.isfinite(margin) and margin > 0):
        raise ValueError(f"equivalence margin must be finite and > 0, got {margin}")
    b, drop_b = _finite(base)
    c, drop_c = _finite(cand)
    conf = 1.0 - 2.0 * alpha
    note = _dropped_note(drop_b, drop_c)
    early = _too_few("equivalence", b, c, margin, conf, min_n, note)
    if early is not None:
        return early
    d = float(np.mean(c) - np.mean(b))
    lo, hi = _bootstrap((b, c), _diff_stat, conf, n_resamples, seed)
    p = max(_welch_p(b, c, -margin, "greater"), _welch_p(b, c, margin, "less"))
    ci = f"{100 * conf:g}% CI [{lo:.4g}, {hi:.4g}]"
    if -margin < lo and hi < margin:
        outcome, why = "pass", f"{ci} inside +-{margin:.4g}"
    elif hi < -margin or lo > margin:
        outcome, why = "fail", f"{ci} entirely outside +-{margin:.4g}"
    else:
        outcome, why = "inconclusive", f"{ci} overlaps the margin +-{margin:.4g}"
    return TestResult(
        kind="equivalence",
        outcome=outcome,
        estimate=d,
        ci_low=lo,
        ci_high=hi,
        confidence=conf,
        margin=float(margin),
        p_value=p,
        n_base=int(b.size),
        n_cand=int(c.size),
        reason=f"cand - base = {d:+.4g}; {why}{note}",
    )


def threshold(
    values: np.ndarray,
    limit: float,
    alpha: float = DEFAULT_ALPHA,
    min_n: int = DEFAULT_MIN_N,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = 0,
) -> TestResult:
    """One-sample check that a metric's mean stays at or below an absolute limit.

    m = mean(values); [lo, hi] = (1 - 2*alpha) bootstrap CI of m. Outcome: pass if hi <= limit;
    fail if lo > limit; otherwise inconclusive. p_value: one-sample t-test of H0: m >= limit
    (ttest_1samp(values, limit, alternative="less")).

    Args:
        values: per-sequence values (the candidate's; reported as n_cand); non-finite dropped.
        limit: the largest acceptable mean, in the metric's unit (stored as TestResult.margin).
        alpha: one-sided error rate (default 0.05, i.e. a 90% CI).
        min_n: fewest finite values for a verdict (default 20); fewer is inconclusive.
        n_resamples: bootstrap resamples (default 2000).
        seed: seed of the bootstrap.

    Returns:
        TestResult with kind "threshold" and n_base = 0.

    Raises:
        ValueError: if limit is not finite or alpha/min_n/n_resamples are out of range.
    """
    _check(alpha, min_n, n_resamples)
    if not np.isfinite(limit):
        raise ValueError(f"limit must be finite, got {limit}")
    x, dropped = _finite(values)
    conf = 1.0 - 2.0 * alpha
    note = _dropped_note(0, dropped)
    early = _too_few("threshold", None, x, limit, conf, min_n, note)
    if early is not None:
        return early
    m = float(np.mean(x))
    lo, hi = _bootstrap((x,), _mean_stat, conf, n_resamples, seed)
    if np.ptp(x) == 0:
        p = 0.0 if m < limit else 1.0
    else:
        p = float(stats.ttest_1samp(x, limit, alternative="less").pvalue)
    one_sided = f"{100 * (1 - alpha):g}%"
    if hi <= limit:
        outcome, why = "pass", f"{one_sided} upper bound {hi:.4g} <= limit {limit:.4g}"
    elif lo > limit:
        outcome, why = "fail", f"{one_sided} lower bound {lo:.4g} > limit {limit:.4g}"
    else:
        outcome, why = "inconclusive", f"{100 * conf:g}% CI [{lo:.4g}, {hi:.4g}] contains limit {limit:.4g}"
    return TestResult(
        kind="threshold",
        outcome=outcome,
        estimate=m,
        ci_low=lo,
        ci_high=hi,
        confidence=conf,
        margin=float(limit),
        p_value=p,
        n_base=0,
        n_cand=int(x.size),
        reason=f"mean = {m:.4g}; {why}{note}",
    )
