"""parity.verdicts.paired: the share of a hypothesis's per-token deviation an engine shows, on
synthetic engines with per-token noise (the recorded SmolLM2 runs are in
tests/categories/test_update_paired_real.py)."""

import numpy as np
import pytest

from parity.verdicts import paired

N_SEQ, N_TOK = 24, 20


def _lists(rng, scale, n_seq=N_SEQ):
    return [rng.normal(0, scale, N_TOK) for _ in range(n_seq)]


def _plus(*parts):
    return [sum(xs) for xs in zip(*parts)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_stale_component_below_the_noise_is_found_and_a_fresh_one_is_not(seed):
    """Hypothesis deviation 1e-3 per token, engine noise 1e-3: the mean |dlogp| of a stale
    engine (~1.1e-3) and a fresh one (~0.8e-3) are alike; the paired share is ~1 vs ~0."""
    rng = np.random.default_rng(seed)
    expected = _lists(rng, 1.0)
    d = _lists(rng, 1e-3)
    hyp = _plus(expected, d)
    fresh = _plus(expected, _lists(rng, 1e-3))
    stale = _plus(hyp, _lists(rng, 1e-3))
    s_fresh = paired.share(fresh, expected, hyp)
    s_stale = paired.share(stale, expected, hyp)
    assert s_fresh.resolved and s_stale.resolved
    assert not s_fresh.holds and s_fresh.ci_high <= paired.SHARE_LIMIT
    assert s_stale.holds and s_stale.ci_low <= 1.0 <= s_stale.ci_high + 0.1
    assert s_fresh.gain < 0 < s_stale.gain
    assert paired.finding("f", {"h": s_fresh}).outcome == "pass"
    failed = paired.finding("f", {"h": s_stale})
    assert failed.outcome == "fail" and "'h'" in failed.note


def test_a_hypothesis_far_below_the_noise_is_unresolved_not_passed():
    rng = np.random.default_rng(0)
    expected = _lists(rng, 1.0)
    hyp = _plus(expected, _lists(rng, 1e-5))
    engine = _plus(expected, _lists(rng, 1e-2))
    s = paired.share(engine, expected, hyp)
    assert not s.resolved and not s.holds
    f = paired.finding("f", {"h": s})
    assert f.outcome == "inconclusive" and "less than the noise" in f.note


def test_unresolved_hypotheses_are_listed_beside_the_judged_ones():
    rng = np.random.default_rng(0)
    expected = _lists(rng, 1.0)
    engine = _plus(expected, _lists(rng, 1e-3))
    shares = {
        "big": paired.share(engine, expected, _plus(expected, _lists(rng, 1e-2))),
        "tiny": paired.share(engine, expected, _plus(expected, _lists(rng, 1e-6))),
    }
    f = paired.finding("f", shares)
    assert f.outcome == "pass" and "unresolved (below the noise): tiny" in f.note


def test_too_few_sequences_give_no_interval():
    rng = np.random.default_rng(0)
    expected = _lists(rng, 1.0, n_seq=5)
    hyp = _plus(expected, _lists(rng, 1e-2, n_seq=5))
    s = paired.share(hyp, expected, hyp)
    assert s.share == pytest.approx(1.0) and np.isnan(s.ci_low) and not s.resolved


def test_an_identical_hypothesis_is_unresolved():
    rng = np.random.default_rng(0)
    expected = _lists(rng, 1.0)
    s = paired.share(expected, expected, expected)
    assert np.isnan(s.share) and not s.resolved


def test_the_best_of_correlated_hypotheses_is_the_true_one():
    """Two components whose deviations are 80% correlated (as neighbouring layers' are): an
    engine stale in one may show a share > 0.5 of the other too; the one named is the one that
    fits best (largest gain)."""
    rng = np.random.default_rng(3)
    expected = _lists(rng, 1.0)
    common, own_a, own_b = _lists(rng, 1e-3), _lists(rng, 0.75e-3), _lists(rng, 0.75e-3)
    d_a, d_b = _plus(common, own_a), _plus(common, own_b)
    engine = _plus(expected, d_a, _lists(rng, 2e-4))
    shares = {
        "a": paired.share(engine, expected, _plus(expected, d_a)),
        "b": paired.share(engine, expected, _plus(expected, d_b)),
    }
    assert shares["b"].share > 0.5  # the neighbour holds too
    assert paired.best(shares) == "a"
    assert paired.finding("f", shares).value == pytest.approx(shares["a"].share)


def test_non_finite_tokens_are_dropped():
    rng = np.random.default_rng(0)
    expected = _lists(rng, 1.0)
    hyp = _plus(expected, _lists(rng, 1e-2))
    engine = [h.copy() for h in hyp]
    engine[0][3] = -np.inf
    s = paired.share(engine, expected, hyp)
    assert s.n_tokens == N_SEQ * N_TOK - 1 and s.share == pytest.approx(1.0)
