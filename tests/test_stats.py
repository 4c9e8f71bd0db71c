"""Verdict statistics: each test must be able to pass, fail and stay inconclusive."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from parity import stats as s
from parity.stats import TestResult


def sample(mean: float, sd: float, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, n)


# --- bootstrap_ci ---


def test_bootstrap_ci_matches_normal_theory_on_a_large_sample():
    x = sample(1.0, 0.5, 2000, seed=1)
    low, high = s.bootstrap_ci(x, confidence=0.95)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(x.size)  # z_{0.975} * sd / sqrt(n)
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_bootstrap_ci_is_deterministic_given_seed():
    x = sample(0.0, 1.0, 50, seed=2)
    assert s.bootstrap_ci(x, seed=7) == s.bootstrap_ci(x, seed=7)
    assert s.bootstrap_ci(x, seed=7) != s.bootstrap_ci(x, seed=8)


def test_bootstrap_ci_degenerate_and_tiny():
    assert s.bootstrap_ci(np.full(30, 0.25)) == (0.25, 0.25)
    assert all(math.isnan(v) for v in s.bootstrap_ci(np.array([1.0])))
    assert all(math.isnan(v) for v in s.bootstrap_ci(np.array([np.nan, np.nan, 1.0])))


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
    assert r.p_value == pytest.approx(sps.t.cdf((x.mean() - 0.05) / (x.std(ddof=1) / 10), 99), rel=1e-9)
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
        "kind", "outcome", "estimate", "ci_low", "ci_high", "confidence",
        "margin", "p_value", "n_base", "n_cand", "reason",
    }
    assert isinstance(r1, TestResult)


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
