"""Verdict statistics: each test must be able to pass, fail and stay inconclusive."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from parity.verdicts import samples
from parity.verdicts import stats as s
from parity.verdicts.stats import TestResult


def sample(mean: float, sd: float, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, n)


# --- bootstrap_ci ---


def test_bootstrap_ci_matches_normal_theory_on_a_large_sample():
    x = sample(1.0, 0.5, 2000, seed=1)
    low, high = samples.bootstrap_ci(x, confidence=0.95)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(x.size)  # z_{0.975} * sd / sqrt(n)
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_bootstrap_ci_is_deterministic_given_seed():
    x = sample(0.0, 1.0, 50, seed=2)
    assert samples.bootstrap_ci(x, seed=7) == samples.bootstrap_ci(x, seed=7)
    assert samples.bootstrap_ci(x, seed=7) != samples.bootstrap_ci(x, seed=8)


def test_bootstrap_ci_degenerate_and_tiny():
    assert samples.bootstrap_ci(np.full(30, 0.25)) == (0.25, 0.25)
    assert all(math.isnan(v) for v in samples.bootstrap_ci(np.array([1.0])))
    assert all(math.isnan(v) for v in samples.bootstrap_ci(np.array([np.nan, np.nan, 1.0])))


# --- non_inferiority (higher is worse) ---


def test_clearly_better_candidate_passes_non_inferiority():
    base, cand = sample(0.10, 0.02, 200, seed=3), sample(0.05, 0.02, 200, seed=4)
    r = s.non_inferiority(base, cand, margin=0.01)
    assert r.outcome == "pass", r.reason
    assert r.kind == "non_inferiority" and r.confidence == pytest.approx(0.90)
    assert r.estimate == pytest.approx(cand.mean() - base.mean())
    assert r.ci_low < r.estimate < r.ci_high < 0.01
    assert r.p_value < 0.05
    assert (r.n_base, r.n_cand) == (200, 200)


def test_clearly_worse_candidate_fails_non_inferiority():
    base, cand = sample(0.05, 0.02, 200, seed=5), sample(0.20, 0.02, 200, seed=6)
    r = s.non_inferiority(base, cand, margin=0.01)
    assert r.outcome == "fail", r.reason
    assert r.ci_low > 0.01
    assert r.p_value > 0.95


def test_non_inferiority_borderline_is_inconclusive():
    base = sample(0.10, 0.02, 100, seed=7)
    r = s.non_inferiority(base, base + 0.01, margin=0.01)  # difference exactly at the margin
    assert r.outcome == "inconclusive", r.reason
    assert r.ci_low < 0.01 < r.ci_high


def test_non_inferiority_p_value_is_welch_by_hand():
    base, cand = sample(0.10, 0.02, 40, seed=8), sample(0.10, 0.05, 60, seed=9)
    margin = 0.01
    va, vb = cand.var(ddof=1) / cand.size, base.var(ddof=1) / base.size
    t = (cand.mean() - base.mean() - margin) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (cand.size - 1) + vb**2 / (base.size - 1))
    r = s.non_inferiority(base, cand, margin=margin)
    assert r.p_value == pytest.approx(sps.t.cdf(t, df), rel=1e-9)


def test_tiny_n_is_inconclusive():
    base, cand = sample(0.10, 0.02, 5, seed=10), sample(0.50, 0.02, 5, seed=11)
    r = s.non_inferiority(base, cand, margin=0.01)
    assert r.outcome == "inconclusive"
    assert "min_n=20" in r.reason
    assert math.isnan(r.ci_low) and math.isnan(r.p_value)
    assert s.non_inferiority(base, cand, margin=0.01, min_n=5).outcome == "fail"


def test_non_finite_values_are_dropped_and_all_nan_is_inconclusive():
    base, cand = sample(0.10, 0.02, 50, seed=12), sample(0.05, 0.02, 50, seed=13)
    r = s.non_inferiority(np.append(base, [np.nan, np.nan]), cand, margin=0.01)
    assert r.outcome == "pass" and r.n_base == 50
    assert "2 base non-finite" in r.reason
    r = s.non_inferiority(np.full(50, np.nan), cand, margin=0.01)
    assert r.outcome == "inconclusive" and r.n_base == 0 and math.isnan(r.estimate)


def test_zero_variance_data_does_not_crash():
    r = s.non_inferiority(np.full(30, 0.1), np.full(30, 0.05), margin=0.01)
    assert r.outcome == "pass"
    assert r.ci_low == r.ci_high == pytest.approx(0.05 - 0.1)
    assert r.p_value == 0.0
    # one constant side (BCa is undefined there; the percentile interval is used)
    r = s.non_inferiority(np.zeros(30), sample(0.05, 0.01, 30, seed=14), margin=0.01)
    assert r.outcome == "fail" and np.isfinite(r.ci_low) and np.isfinite(r.ci_high)


# --- equivalence_tost ---


def test_equal_distributions_pass_tost_with_generous_margin():
    base, cand = sample(1.0, 0.1, 200, seed=15), sample(1.0, 0.1, 200, seed=16)
    r = s.equivalence_tost(base, cand, margin=0.1)
    assert r.outcome == "pass", r.reason
    assert -0.1 < r.ci_low < r.ci_high < 0.1
    assert r.p_value < 0.05


def test_shifted_distributions_fail_tost():
    base, cand = sample(1.0, 0.1, 200, seed=17), sample(1.5, 0.1, 200, seed=18)
    r = s.equivalence_tost(base, cand, margin=0.1)
    assert r.outcome == "fail", r.reason
    assert r.ci_low > 0.1
    assert s.equivalence_tost(cand, base, margin=0.1).outcome == "fail"  # shifted down too


def test_tost_borderline_is_inconclusive():
    base = sample(1.0, 0.1, 100, seed=19)
    r = s.equivalence_tost(base, base + 0.1, margin=0.1)
    assert r.outcome == "inconclusive", r.reason
    assert r.p_value > 0.05


def test_tost_p_value_is_the_larger_one_sided_p():
    base, cand = sample(1.0, 0.1, 40, seed=20), sample(1.03, 0.2, 50, seed=21)
    margin = 0.05
    va, vb = cand.var(ddof=1) / cand.size, base.var(ddof=1) / base.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (cand.size - 1) + vb**2 / (base.size - 1))
    d = cand.mean() - base.mean()
    p_low = sps.t.sf((d + margin) / se, df)  # H0: d <= -margin
    p_high = sps.t.cdf((d - margin) / se, df)  # H0: d >= margin
    r = s.equivalence_tost(base, cand, margin=margin)
    assert r.p_value == pytest.approx(max(p_low, p_high), rel=1e-9)


# --- threshold ---


def test_threshold_pass_fail_inconclusive():
    assert s.threshold(sample(0.01, 0.005, 100, seed=22), limit=0.05).outcome == "pass"
    assert s.threshold(sample(0.10, 0.005, 100, seed=23), limit=0.05).outcome == "fail"
    x = sample(0.05, 0.01, 100, seed=24)
    r = s.threshold(x - x.mean() + 0.05, limit=0.05)  # mean exactly at the limit
    assert r.outcome == "inconclusive", r.reason
    assert s.threshold(np.array([0.0, 0.0, 0.0]), limit=0.05).outcome == "inconclusive"


def test_threshold_fields_and_degenerate_values():
    x = sample(0.01, 0.005, 100, seed=25)
    r = s.threshold(x, limit=0.05)
    assert r.kind == "threshold" and r.margin == 0.05 and (r.n_base, r.n_cand) == (0, 100)
    assert r.p_value == pytest.approx(
        sps.t.cdf((x.mean() - 0.05) / (x.std(ddof=1) / 10), 99), rel=1e-9
    )
    r = s.threshold(np.zeros(30), limit=0.0)  # upper bound == limit passes (<=)
    assert r.outcome == "pass" and r.ci_high == 0.0


# --- the result record ---


def test_results_are_deterministic_given_seed_and_serialise():
    base, cand = sample(0.10, 0.03, 60, seed=26), sample(0.09, 0.03, 60, seed=27)
    r1 = s.non_inferiority(base, cand, margin=0.02, seed=3)
    r2 = s.non_inferiority(base, cand, margin=0.02, seed=3)
    assert r1 == r2
    d = r1.to_dict()
    assert set(d) == {
        "kind",
        "outcome",
        "estimate",
        "ci_low",
        "ci_high",
        "confidence",
        "margin",
        "p_value",
        "n_base",
        "n_cand",
        "reason",
        "unit",
        "paired",
    }
    assert (d["unit"], d["paired"]) == ("sequence", False)  # the default design
    assert isinstance(r1, TestResult)
    # positional construction without the design fields still works
    r = TestResult("threshold", "pass", 0.0, 0.0, 0.0, 0.9, 0.1, 0.0, 0, 30, "x")
    assert (r.unit, r.paired) == ("sequence", False)


def test_invalid_settings_raise():
    x = sample(0.0, 1.0, 30, seed=28)
    with pytest.raises(ValueError):
        s.non_inferiority(x, x, margin=0.1, alpha=0.6)
    with pytest.raises(ValueError):
        s.non_inferiority(x, x, margin=float("nan"))
    with pytest.raises(ValueError):
        s.equivalence_tost(x, x, margin=0.0)
    with pytest.raises(ValueError):
        s.threshold(x, limit=0.1, min_n=1)


# --- sampling design: prompts as clusters, paired comparisons ---


def prompts(
    n_prompts: int,
    n_samples: int,
    prompt_sd: float,
    seq_sd: float,
    seed: int,
    shift: float = 0.0,
    effects: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n_samples sequences per prompt: value = prompt effect + shift + sequence noise.

    Returns (values, prompt ids, prompt effects); pass `effects` to reuse one draw of prompts.
    """
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, prompt_sd, n_prompts) if effects is None else effects
    values = np.repeat(mu, n_samples) + shift + rng.normal(0.0, seq_sd, n_prompts * n_samples)
    return values, np.repeat(np.arange(n_prompts), n_samples), mu


def test_cluster_means_by_hand():
    values = np.array([1.0, 3.0, np.nan, 4.0, np.nan, 7.0, 2.0])
    clusters = np.array(["p2", "p2", "p1", "p1", "p3", "p0", "p1"])
    ids, means = samples.cluster_means(values, clusters)
    # first finite value: p2 at 0, p1 at 3, p0 at 5; p3 has no finite value and is dropped
    assert ids.tolist() == ["p2", "p1", "p0"]
    assert means.tolist() == [(1.0 + 3.0) / 2, (4.0 + 2.0) / 2, 7.0]
    ids, means = samples.cluster_means(np.array([np.nan]), np.array([5]))
    assert ids.size == 0 and means.size == 0
    with pytest.raises(ValueError):
        samples.cluster_means(np.zeros(3), np.zeros(2))


def test_threshold_on_prompts_reports_the_mean_of_prompt_means():
    # unequal cluster sizes: 3 prompts with 1, 2 and 3 sequences (min_n lowered to 3 prompts)
    values = np.array([0.1, 0.2, 0.4, 0.3, 0.3, 0.6])
    ids = np.array([0, 1, 1, 2, 2, 2])
    r = s.threshold(values, limit=1.0, min_n=3, clusters=ids)
    cm = np.array([0.1, 0.3, 0.4])  # prompt means by hand
    assert r.estimate == pytest.approx(cm.mean())  # 0.2667, not the sequence mean 0.3167
    assert (r.unit, r.paired, r.n_cand) == ("prompt", False, 3)
    t = (cm.mean() - 1.0) / (cm.std(ddof=1) / math.sqrt(3))
    assert r.p_value == pytest.approx(sps.t.cdf(t, 2), rel=1e-9)
    assert "3 prompt means" in r.reason


def test_cluster_interval_is_much_wider_than_the_sequence_interval():
    # 25 prompts x 8 samples; the prompt effect (sd 1) dwarfs the sequence noise (sd 0.2), so
    # the 8 samples of a prompt carry little more information than one: design effect
    # 1 + 7 * rho with rho = 1 / 1.04, i.e. ~7.7, and a true interval ~2.8x the naive one.
    values, ids, _ = prompts(25, 8, 1.0, 0.2, seed=30)
    lo_n, hi_n = samples.bootstrap_ci(values, confidence=0.9)
    lo_c, hi_c = samples.bootstrap_ci(values, confidence=0.9, clusters=ids)
    assert hi_c - lo_c > 2.0 * (hi_n - lo_n)
    # the cluster interval's width matches the t interval of the 25 prompt means
    cm = values.reshape(25, 8).mean(axis=1)
    half = sps.t.ppf(0.95, 24) * cm.std(ddof=1) / 5
    assert hi_c - lo_c == pytest.approx(2 * half, rel=0.2)


def test_cluster_bootstrap_covers_and_sequence_bootstrap_does_not():
    # 200 simulated experiments with true mean 0: the 90% prompt-level interval covers ~90% of
    # the time; the sequence-level one, treating correlated samples as independent, ~40%.
    # The same data, read as a threshold test at limit = the true mean (H0's boundary), passes
    # ~5% of the time (alpha) at prompt level and far more often at sequence level.
    reps, cover, false_pass = 200, {"sequence": 0, "prompt": 0}, {"sequence": 0, "prompt": 0}
    for k in range(reps):
        values, ids, _ = prompts(25, 8, 1.0, 0.2, seed=1000 + k)
        for unit, clusters in (("sequence", None), ("prompt", ids)):
            lo, hi = samples.bootstrap_ci(values, 0.9, n_resamples=500, seed=k, clusters=clusters)
            cover[unit] += lo <= 0.0 <= hi
            false_pass[unit] += hi <= 0.0  # the threshold test's pass rule at limit 0
    assert 0.84 <= cover["prompt"] / reps <= 0.95
    assert cover["sequence"] / reps < 0.6
    assert false_pass["prompt"] / reps <= 0.09
    assert false_pass["sequence"] / reps >= 0.2


def test_threshold_with_clusters_pass_fail_inconclusive():
    ok, ids, _ = prompts(25, 8, 0.005, 0.005, seed=31)
    assert s.threshold(0.01 + ok, limit=0.05, clusters=ids).outcome == "pass"
    assert s.threshold(0.10 + ok, limit=0.05, clusters=ids).outcome == "fail"
    # 10 prompts x 8 = 80 sequences: enough sequences, too few prompts
    few, few_ids, _ = prompts(10, 8, 0.005, 0.005, seed=32)
    r = s.threshold(0.10 + few, limit=0.05, clusters=few_ids)
    assert r.outcome == "inconclusive" and r.n_cand == 10 and r.unit == "prompt"
    assert "per-prompt" in r.reason and "min_n=20" in r.reason
    assert s.threshold(0.10 + few, limit=0.05).outcome == "fail"  # the naive test decides


def test_threshold_naive_pass_is_inconclusive_per_prompt():
    # Limit 3 naive standard errors above the mean: the sequence-level 95% bound (1.645 se) is
    # below it, the prompt-level one (~1.645 * 2.8 se) is not; the lower bound is below too.
    values, ids, _ = prompts(25, 8, 1.0, 0.2, seed=33)
    limit = values.mean() + 3.0 * values.std(ddof=1) / math.sqrt(values.size)
    assert s.threshold(values, limit).outcome == "pass"
    r = s.threshold(values, limit, clusters=ids)
    assert r.outcome == "inconclusive", r.reason


def paired_engines(shift: float, n_prompts: int = 25, seed: int = 40):
    """Both engines answer the same prompts (shared prompt effect, sd 1); cand is shifted.

    Per-prompt difference sd = 0.02 * sqrt(2 / 8) = 0.01, so paired SE(d) ~ 0.002 over 25
    prompts, against ~0.28 for unpaired prompt means: a 0.05 shift is plain paired, invisible
    unpaired.
    """
    base, ids, mu = prompts(n_prompts, 8, 1.0, 0.02, seed=seed)
    cand, _, _ = prompts(n_prompts, 8, 1.0, 0.02, seed=seed + 1, shift=shift, effects=mu)
    return base, cand, ids


def test_paired_non_inferiority_detects_a_shift_unpaired_cannot():
    base, cand, ids = paired_engines(shift=0.05)
    kw = {"base_clusters": ids, "cand_clusters": ids}
    r = s.non_inferiority(base, cand, margin=0.02, paired=True, **kw)
    assert r.outcome == "fail", r.reason
    assert (r.unit, r.paired, r.n_base, r.n_cand) == ("prompt", True, 25, 25)
    assert "paired by prompt" in r.reason
    u = s.non_inferiority(base, cand, margin=0.02, **kw)  # prompt means, not paired
    assert u.outcome == "inconclusive", u.reason
    assert (u.unit, u.paired) == ("prompt", False)
    assert u.ci_high - u.ci_low > 10 * (r.ci_high - r.ci_low)
    # no shift: paired passes, unpaired still cannot tell
    base, cand, ids = paired_engines(shift=0.0)
    assert s.non_inferiority(base, cand, 0.02, paired=True, **kw).outcome == "pass"
    assert s.non_inferiority(base, cand, 0.02, **kw).outcome == "inconclusive"


def test_paired_tost_pass_fail_inconclusive():
    kw = lambda ids: {"base_clusters": ids, "cand_clusters": ids}  # noqa: E731
    base, cand, ids = paired_engines(shift=0.0)
    r = s.equivalence_tost(base, cand, margin=0.02, paired=True, **kw(ids))
    assert r.outcome == "pass", r.reason
    assert s.equivalence_tost(base, cand, margin=0.02, **kw(ids)).outcome == "inconclusive"
    base, cand, ids = paired_engines(shift=0.05)
    assert s.equivalence_tost(base, cand, margin=0.02, paired=True, **kw(ids)).outcome == "fail"
    assert s.equivalence_tost(cand, base, margin=0.02, paired=True, **kw(ids)).outcome == "fail"
    base, cand, ids = paired_engines(shift=0.05, n_prompts=10)
    r = s.equivalence_tost(base, cand, margin=0.02, paired=True, **kw(ids))
    assert r.outcome == "inconclusive" and r.n_base == r.n_cand == 10
    assert "prompts present on both sides" in r.reason and "min_n=20" in r.reason


def test_paired_p_values_are_one_sample_t_tests_by_hand():
    base, cand, ids = paired_engines(shift=0.01)
    d = np.array([cand[ids == i].mean() - base[ids == i].mean() for i in range(25)])
    se = d.std(ddof=1) / 5
    kw = {"paired": True, "base_clusters": ids, "cand_clusters": ids}
    r = s.non_inferiority(base, cand, margin=0.02, **kw)
    assert r.estimate == pytest.approx(d.mean())
    assert r.p_value == pytest.approx(sps.t.cdf((d.mean() - 0.02) / se, 24), rel=1e-9)
    r = s.equivalence_tost(base, cand, margin=0.03, **kw)
    p_low = sps.t.sf((d.mean() + 0.03) / se, 24)
    p_high = sps.t.cdf((d.mean() - 0.03) / se, 24)
    assert r.p_value == pytest.approx(max(p_low, p_high), rel=1e-9)


def test_paired_aligns_prompts_by_id():
    base, cand, ids = paired_engines(shift=0.0, n_prompts=30)
    kw = {"paired": True}
    ref = s.non_inferiority(base, cand, 0.02, base_clusters=ids, cand_clusters=ids, **kw)
    # cand in another order, with an extra prompt the baseline never answered
    order = np.random.default_rng(0).permutation(cand.size)
    cand2, ids2 = np.append(cand[order], [5.0, 5.0]), np.append(ids[order], [99, 99])
    r = s.non_inferiority(base, cand2, 0.02, base_clusters=ids, cand_clusters=ids2, **kw)
    assert (r.estimate, r.ci_low, r.ci_high, r.p_value) == pytest.approx(
        (ref.estimate, ref.ci_low, ref.ci_high, ref.p_value), rel=1e-12
    )
    assert r.n_base == r.n_cand == 30 and "1 cand-only prompts dropped" in r.reason
    # base-only prompts are dropped too: prompt 0 missing from cand
    keep = ids != 0
    r = s.non_inferiority(base, cand[keep], 0.02, base_clusters=ids, cand_clusters=ids[keep], **kw)
    assert r.n_base == r.n_cand == 29 and "1 base-only" in r.reason


def test_paired_without_clusters_takes_aligned_per_prompt_arrays():
    base, cand, ids = paired_engines(shift=0.05)
    b = base.reshape(25, 8).mean(axis=1)
    c = cand.reshape(25, 8).mean(axis=1)
    with_ids = s.non_inferiority(
        base, cand, 0.02, paired=True, base_clusters=ids, cand_clusters=ids
    )
    r = s.non_inferiority(b, c, 0.02, paired=True)
    assert r.outcome == with_ids.outcome == "fail"
    assert r.estimate == pytest.approx(with_ids.estimate)
    assert (r.unit, r.paired) == ("prompt", True)
    r = s.non_inferiority(np.append(b, np.nan), np.append(c, 0.0), 0.02, paired=True)
    assert r.n_base == 25 and "1 non-finite prompts dropped" in r.reason
    with pytest.raises(ValueError):
        s.non_inferiority(b, c[:-1], 0.02, paired=True)


def test_clusters_on_one_side_only_raise():
    x, ids, _ = prompts(25, 2, 1.0, 0.1, seed=50)
    with pytest.raises(ValueError):
        s.non_inferiority(x, x, 0.1, base_clusters=ids)
    with pytest.raises(ValueError):
        s.equivalence_tost(x, x, 0.1, paired=True, cand_clusters=ids)
    with pytest.raises(ValueError):
        s.threshold(x, 0.1, clusters=ids[:-1])
