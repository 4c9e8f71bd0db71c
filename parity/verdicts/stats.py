"""The verdict tests: non_inferiority, equivalence_tost and threshold over the samples of
samples.py, each returning a three-valued TestResult (pass / fail / inconclusive), never a bare
boolean."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from parity.verdicts import samples

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_N",
    "TestResult",
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
# unstable there); below 20 units (sequences, or prompts when clustered) per side a verdict is
# reported as inconclusive.
DEFAULT_MIN_N = 20


@dataclass(frozen=True)
class TestResult:
    """The outcome of one verdict test, with everything needed to report it.

    Attributes:
        kind: "non_inferiority", "equivalence" or "threshold".
        outcome: "pass", "fail" or "inconclusive".
        estimate: mean(cand) - mean(base) for two-sample tests; mean(values) for threshold.
            With unit "prompt" the means are over prompt means (each prompt weighs the same).
        ci_low: lower end of the (confidence) bootstrap interval of the estimate (NaN if none).
        ci_high: upper end of it.
        confidence: two-sided coverage of [ci_low, ci_high], 1 - 2*alpha.
        margin: the non-inferiority / equivalence margin, or the limit for threshold.
        p_value: Welch's (or one-sample) t-test p-value of the null the test tries to reject.
        n_base: units (finite sequence values, or prompts) used from the baseline (0 for threshold).
        n_cand: units used from the candidate (or from `values` for threshold). Paired: the
            number of prompts present on both sides, so n_base == n_cand.
        reason: one line saying why the outcome is what it is.
        unit: what was resampled: "sequence" (independent sequences) or "prompt" (cluster means).
        paired: True when base and cand were compared prompt by prompt (d = cand - base).
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
    unit: samples.Unit = "sequence"
    paired: bool = False

    def to_dict(self) -> dict[str, object]:
        """The fields as a plain dict (floats may be NaN; the report writer decides their spelling).

        Returns:
            {field name: value} for every field.
        """
        return asdict(self)


def _check(alpha: float, min_n: int, n_resamples: int) -> None:
    """Reject settings that make a test meaningless."""
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if min_n < 2:
        raise ValueError(f"min_n must be >= 2 (a variance needs two values), got {min_n}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


def _too_few(
    kind: Kind,
    base: np.ndarray | None,
    cand: np.ndarray,
    margin: float,
    confidence: float,
    min_n: int,
    note: str,
    unit: samples.Unit = "sequence",
    paired: bool = False,
) -> TestResult | None:
    """An inconclusive result if a side has fewer than min_n finite units, else None."""
    sides = [("cand", cand)] if base is None else [("base", base), ("cand", cand)]
    short = [f"{name} has {x.size}" for name, x in sides if x.size < min_n]
    if not short:
        return None
    if paired:
        short = [f"{cand.size}"]  # both sides have the same count
    if base is None:
        estimate = float(np.mean(cand)) if cand.size else float("nan")
    else:
        estimate = float(np.mean(cand) - np.mean(base)) if cand.size and base.size else float("nan")
    what = "prompts present on both sides" if paired else f"finite per-{unit} values"
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
        reason=f"too few {what}: {', '.join(short)} (< min_n={min_n}){note}",
        unit=unit,
        paired=paired,
    )


def non_inferiority(
    base: np.ndarray,
    cand: np.ndarray,
    margin: float,
    alpha: float = DEFAULT_ALPHA,
    min_n: int = DEFAULT_MIN_N,
    n_resamples: int = samples.DEFAULT_N_RESAMPLES,
    seed: int = 0,
    *,
    paired: bool = False,
    base_clusters: np.ndarray | None = None,
    cand_clusters: np.ndarray | None = None,
) -> TestResult:
    """Non-inferiority for a mismatch metric where higher is worse (KL, |dlogp|, clip rate).

    d = mean(cand) - mean(base);  H0: d >= margin  vs  H1: d < margin.
    [lo, hi] = (1 - 2*alpha) bootstrap CI of d (BCa), so hi is a one-sided (1 - alpha) upper
    bound. Outcome: pass if hi < margin; fail if lo > margin (d significantly above the margin);
    otherwise inconclusive. The CI decides; p_value is a t-test of the same H0, reported
    alongside, and agrees with the CI except near the boundary.

    The sampling design decides the unit (TestResult.unit / paired):
      - default: independent sequences; the samples are resampled independently and p_value is
        Welch's (ttest_ind(cand - margin, base, alternative="less")).
      - clusters (both base_clusters and cand_clusters, e.g. prompt ids with n samples per
        prompt): the sequences of one prompt are correlated, so each side is first reduced to
        its prompt means (cluster_means) and the prompts are resampled; d is then the
        difference of the means of prompt means. Welch on prompt means.
      - paired=True: both engines answered the same prompts. With clusters, prompt means are
        aligned by id (prompts present on one side only are dropped); without, base and cand
        must already be aligned per-prompt arrays of equal length (pairs with a non-finite side
        are dropped). d_i = cand_i - base_i per prompt; the CI is a one-sample bootstrap of d_i
        and p_value a one-sample t-test (ttest_1samp(d, margin, alternative="less")). Pairing
        removes the between-prompt variance, which dominates when prompts differ a lot.
    min_n counts units: sequences, prompts, or pairs.

    Args:
        base: per-sequence (or per-prompt, when paired without clusters) baseline values;
            non-finite values are dropped.
        cand: the same for the candidate engine.
        margin: how much worse than the baseline the candidate may be, in the metric's unit.
        alpha: one-sided error rate (default 0.05, i.e. a 90% two-sided CI).
        min_n: fewest units per side for a verdict (default 20); fewer is inconclusive.
        n_resamples: bootstrap resamples (default 2000).
        seed: seed of the bootstrap; the same inputs and seed give the same result.
        paired: compare prompt by prompt (see above).
        base_clusters: cluster (prompt) id of each base value, or None.
        cand_clusters: cluster (prompt) id of each cand value, or None; given with base_clusters.

    Returns:
        TestResult with kind "non_inferiority".

    Raises:
        ValueError: if margin is not finite, alpha/min_n/n_resamples are out of range, only one
            side has clusters, or arrays that must be aligned are not.
    """
    _check(alpha, min_n, n_resamples)
    if not np.isfinite(margin):
        raise ValueError(f"margin must be finite, got {margin}")
    design = samples.design(base, cand, paired, base_clusters, cand_clusters)
    b, c = design.base, design.cand
    conf = 1.0 - 2.0 * alpha
    early = _too_few(
        "non_inferiority", b, c, margin, conf, min_n, design.note, design.unit, design.paired
    )
    if early is not None:
        return early
    d, lo, hi = samples.diff_ci(design, conf, n_resamples, seed)
    p = samples.diff_p(design, margin, "less")
    one_sided = f"{100 * (1 - alpha):g}%"
    if hi < margin:
        outcome, why = "pass", f"{one_sided} upper bound {hi:.4g} < margin {margin:.4g}"
    elif lo > margin:
        outcome, why = "fail", f"{one_sided} lower bound {lo:.4g} > margin {margin:.4g}"
    else:
        outcome, why = (
            "inconclusive",
            f"{100 * conf:g}% CI [{lo:.4g}, {hi:.4g}] contains margin {margin:.4g}",
        )
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
        reason=f"cand - base = {d:+.4g}; {why}{design.describe()}{design.note}",
        unit=design.unit,
        paired=design.paired,
    )


def equivalence_tost(
    base: np.ndarray,
    cand: np.ndarray,
    margin: float,
    alpha: float = DEFAULT_ALPHA,
    min_n: int = DEFAULT_MIN_N,
    n_resamples: int = samples.DEFAULT_N_RESAMPLES,
    seed: int = 0,
    *,
    paired: bool = False,
    base_clusters: np.ndarray | None = None,
    cand_clusters: np.ndarray | None = None,
) -> TestResult:
    """Equivalence by two one-sided tests (TOST) for behaviour metrics (entropy, reward).

    d = mean(cand) - mean(base);  H0: |d| >= margin  vs  H1: -margin < d < margin.
    [lo, hi] = (1 - 2*alpha) bootstrap CI of d. Outcome: pass if -margin < lo and hi < margin
    (both one-sided tests reject at level alpha); fail if the CI lies entirely outside
    [-margin, margin] (hi < -margin or lo > margin); otherwise inconclusive.
    p_value = max(p_low, p_high), the one-sided tests of H0: d <= -margin and H0: d >= margin:
    Welch's by default and with clusters, one-sample t-tests on cand - base when paired.
    The design arguments (paired, base_clusters, cand_clusters) work as in non_inferiority.

    Args:
        base: per-sequence (or per-prompt, when paired without clusters) baseline values;
            non-finite values are dropped.
        cand: the same for the candidate engine.
        margin: largest difference that still counts as equivalent (> 0), in the metric's unit.
        alpha: error rate of each one-sided test (default 0.05, i.e. a 90% CI).
        min_n: fewest units per side for a verdict (default 20); fewer is inconclusive.
        n_resamples: bootstrap resamples (default 2000).
        seed: seed of the bootstrap.
        paired: compare prompt by prompt.
        base_clusters: cluster (prompt) id of each base value, or None.
        cand_clusters: cluster (prompt) id of each cand value, or None; given with base_clusters.

    Returns:
        TestResult with kind "equivalence".

    Raises:
        ValueError: if margin is not finite and > 0, alpha/min_n/n_resamples are out of range,
            only one side has clusters, or arrays that must be aligned are not.
    """
    _check(alpha, min_n, n_resamples)
    if not (np.isfinite(margin) and margin > 0):
        raise ValueError(f"equivalence margin must be finite and > 0, got {margin}")
    design = samples.design(base, cand, paired, base_clusters, cand_clusters)
    b, c = design.base, design.cand
    conf = 1.0 - 2.0 * alpha
    early = _too_few(
        "equivalence", b, c, margin, conf, min_n, design.note, design.unit, design.paired
    )
    if early is not None:
        return early
    d, lo, hi = samples.diff_ci(design, conf, n_resamples, seed)
    p = max(samples.diff_p(design, -margin, "greater"), samples.diff_p(design, margin, "less"))
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
        reason=f"cand - base = {d:+.4g}; {why}{design.describe()}{design.note}",
        unit=design.unit,
        paired=design.paired,
    )


def threshold(
    values: np.ndarray,
    limit: float,
    alpha: float = DEFAULT_ALPHA,
    min_n: int = DEFAULT_MIN_N,
    n_resamples: int = samples.DEFAULT_N_RESAMPLES,
    seed: int = 0,
    *,
    clusters: np.ndarray | None = None,
) -> TestResult:
    """One-sample check that a metric's mean stays at or below an absolute limit.

    m = mean(values); [lo, hi] = (1 - 2*alpha) bootstrap CI of m. Outcome: pass if hi <= limit;
    fail if lo > limit; otherwise inconclusive. p_value: one-sample t-test of H0: m >= limit
    (ttest_1samp(values, limit, alternative="less")).

    With clusters (e.g. prompt ids, n samples per prompt), the test runs on the cluster means:
    m is the mean of prompt means (each prompt weighs the same; it equals the sequence mean when
    every prompt has the same number of finite values), the bootstrap resamples prompts, the
    t-test is on prompt means, and min_n counts prompts. Resampling sequences instead would
    treat correlated samples of one prompt as independent and give intervals too narrow.

    Args:
        values: per-sequence values (the candidate's; reported as n_cand); non-finite dropped.
        limit: the largest acceptable mean, in the metric's unit (stored as TestResult.margin).
        alpha: one-sided error rate (default 0.05, i.e. a 90% CI).
        min_n: fewest units for a verdict (default 20); fewer is inconclusive.
        n_resamples: bootstrap resamples (default 2000).
        seed: seed of the bootstrap.
        clusters: cluster (prompt) id of each value, or None for independent sequences.

    Returns:
        TestResult with kind "threshold" and n_base = 0.

    Raises:
        ValueError: if limit is not finite, alpha/min_n/n_resamples are out of range, or
            clusters differ in length from values.
    """
    _check(alpha, min_n, n_resamples)
    if not np.isfinite(limit):
        raise ValueError(f"limit must be finite, got {limit}")
    x, dropped = samples.one_side(values, clusters)
    unit: samples.Unit = "sequence" if clusters is None else "prompt"
    conf = 1.0 - 2.0 * alpha
    note = samples.dropped_note(0, dropped)
    early = _too_few("threshold", None, x, limit, conf, min_n, note, unit)
    if early is not None:
        return early
    m = float(np.mean(x))
    lo, hi = samples.bootstrap((x,), samples.mean_stat, conf, n_resamples, seed)
    p = samples.one_sample_p(x, limit, "less")
    one_sided = f"{100 * (1 - alpha):g}%"
    if hi <= limit:
        outcome, why = "pass", f"{one_sided} upper bound {hi:.4g} <= limit {limit:.4g}"
    elif lo > limit:
        outcome, why = "fail", f"{one_sided} lower bound {lo:.4g} > limit {limit:.4g}"
    else:
        outcome, why = (
            "inconclusive",
            f"{100 * conf:g}% CI [{lo:.4g}, {hi:.4g}] contains limit {limit:.4g}",
        )
    what = "mean" if clusters is None else f"mean of {x.size} prompt means"
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
        reason=f"{what} = {m:.4g}; {why}{note}",
        unit=unit,
    )
