"""Metric formulas checked against arithmetic written out by hand."""

import math
import warnings

import numpy as np
import pytest

from parity.verdicts import formulas
from parity.verdicts import metrics as m
from parity.verdicts.formulas import GSPO_CLIP, ClipRange


def a(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float64)


# --- per-token formulas ---


def test_log_ratio_is_ref_minus_cand():
    assert formulas.log_ratio(a(-1.0), a(-1.1))[0] == pytest.approx(0.1)
    assert formulas.log_ratio(a(-1.1), a(-1.0))[0] == pytest.approx(-0.1)


def test_abs_dlogp_and_abs_dprob():
    assert formulas.abs_dlogp(a(-1.0), a(-1.5))[0] == pytest.approx(0.5)
    # probabilities 0.5 vs 0.4
    assert formulas.abs_dprob(a(math.log(0.5)), a(math.log(0.4)))[0] == pytest.approx(0.1)


def test_kl_k1_k2_k3_at_r_0p1():
    ref, cand = a(-1.0), a(-1.1)  # r = 0.1
    assert formulas.kl_k1(ref, cand)[0] == pytest.approx(-0.1)
    assert formulas.kl_k2(ref, cand)[0] == pytest.approx(0.1**2 / 2)  # 0.005
    # exp(0.1) - 1 - 0.1 = 1.1051709180756477 - 1.1
    assert formulas.kl_k3(ref, cand)[0] == pytest.approx(0.005170918075647624, rel=1e-9)


def test_kl_k3_negative_r_and_tiny_r():
    # r = -0.5: exp(-0.5) - 1 + 0.5 = 0.6065306597126334 - 0.5
    assert formulas.kl_k3(a(-1.5), a(-1.0))[0] == pytest.approx(0.10653065971263342, rel=1e-9)
    # r = 1e-10: k3 ~ r^2/2 = 5e-21; naive exp(r) - 1 - r loses every digit here.
    assert formulas.kl_k3(a(-1.0 + 1e-10), a(-1.0))[0] == pytest.approx(5e-21, rel=1e-3)


def test_k2_of_negative_r():
    assert formulas.kl_k2(a(-1.4), a(-1.0))[0] == pytest.approx(0.4**2 / 2)  # 0.08


# --- clipping ---


def test_token_clip_boundaries_are_not_clipped():
    # r is exactly log(ratio): ref = log(ratio), cand = 0 for ratios <= 1; ref = 0, cand = -log(ratio) above.
    low = formulas.token_clipped(a(math.log(0.8)), a(0.0))
    high = formulas.token_clipped(a(0.0), a(-math.log(1.28)))
    assert not low[0] and not high[0]  # closed range: exactly 0.8 and 1.28 stay unclipped
    assert formulas.token_clipped(a(math.log(0.79)), a(0.0))[0]
    assert formulas.token_clipped(a(0.0), a(-math.log(1.29)))[0]
    assert not formulas.token_clipped(a(-1.0), a(-1.0))[0]  # ratio 1


def test_clip_range_is_settable():
    clip = ClipRange(eps_low=0.1, eps_high=0.1)
    assert formulas.token_clipped(a(math.log(0.85)), a(0.0), clip)[0]  # 0.85 < 0.9
    assert not formulas.token_clipped(a(math.log(0.85)), a(0.0))[0]  # default: 0.85 >= 0.8
    with pytest.raises(ValueError):
        ClipRange(eps_low=-0.1)
    with pytest.raises(ValueError):
        ClipRange(eps_high=float("inf"))


def test_gspo_sequence_clip_differs_from_token_clip():
    # Ratios 1.5 and 1/1.5: both tokens clipped, geometric mean exactly 1, so not sequence-clipped.
    ref_mixed, cand_mixed = a(math.log(0.6), math.log(0.4)), a(math.log(0.4), math.log(0.6))
    assert formulas.token_clipped(ref_mixed, cand_mixed).tolist() == [True, True]
    assert not formulas.sequence_clipped(ref_mixed, cand_mixed)
    # Ratios 1.5 and 1.5: geometric mean 1.5 > 1.28.
    ref_up, cand_up = a(math.log(0.6), math.log(0.6)), a(math.log(0.4), math.log(0.4))
    assert formulas.sequence_clipped(ref_up, cand_up)
    s = m.summarize([ref_mixed, ref_up], [cand_mixed, cand_up])
    assert s["clip_rate_token"] == pytest.approx(4 / 4)
    assert s["clip_rate_seq"] == pytest.approx(1 / 2)
    with pytest.raises(ValueError):
        formulas.sequence_clipped(a(), a())


def test_gspo_range_is_the_papers():
    # Zheng et al. 2025 (GSPO): eps_low = 3e-4, eps_high = 4e-4 on exp(mean_t r).
    assert (GSPO_CLIP.eps_low, GSPO_CLIP.eps_high) == (3e-4, 4e-4)
    assert GSPO_CLIP.log_high == pytest.approx(math.log(1.0004), rel=1e-12)  # 3.99920e-4
    assert GSPO_CLIP.log_low == pytest.approx(math.log(0.9997), rel=1e-12)  # -3.00045e-4


def test_mean_r_5e_4_is_sequence_clipped_by_gspo_not_by_the_token_range():
    # r = [0, 1e-3]: mean r = 5e-4 > log(1.0004) = 3.9992e-4, but far inside log(1.28) = 0.247.
    ref, cand = a(-1.0, -2.0 + 1e-3), a(-1.0, -2.0)
    assert formulas.sequence_clipped(ref, cand)  # default: GSPO range
    assert formulas.sequence_clipped(ref, cand, GSPO_CLIP)
    assert not formulas.sequence_clipped(ref, cand, ClipRange())
    s = m.summarize([ref], [cand])
    assert s["clip_rate_seq"] == 1.0
    assert s["clip_rate_token"] == 0.0  # no token is outside [0.8, 1.28]
    assert m.per_sequence([ref], [cand])["clipped_seq"].tolist() == [1.0]
    # the token range, asked for explicitly, does not clip it
    assert m.summarize([ref], [cand], seq_clip=ClipRange())["clip_rate_seq"] == 0.0
    assert m.per_sequence([ref], [cand], seq_clip=ClipRange())["clipped_seq"].tolist() == [0.0]
    # and the token `clip` argument no longer decides the sequence clip
    assert m.summarize([ref], [cand], None, ClipRange(0.5, 0.5))["clip_rate_seq"] == 1.0


def test_gspo_sequence_clip_both_sides():
    # mean r per sequence: +5e-4 (above 3.9992e-4), +3.5e-4 (inside), -2.5e-4 (inside),
    # -3.5e-4 (below -3.00045e-4). Tokens hold r = 0 and 2 * mean r.
    means = [5e-4, 3.5e-4, -2.5e-4, -3.5e-4]
    ref = [a(-1.0, -1.0 + 2 * mu) for mu in means]
    cand = [a(-1.0, -1.0) for _ in means]
    ps = m.per_sequence(ref, cand)
    assert ps["clipped_seq"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert m.summarize(ref, cand)["clip_rate_seq"] == pytest.approx(2 / 4)
    tight = ClipRange(eps_low=1e-4, eps_high=1e-4)  # log bounds ~ +-1e-4: all four clipped
    assert m.per_sequence(ref, cand, seq_clip=tight)["clipped_seq"].tolist() == [1.0] * 4


# --- ESS ---


def test_ess_of_equal_weights_is_one():
    assert formulas.ess_normalized(a(0.0, 0.0, 0.0, 0.0)) == pytest.approx(1.0)
    assert formulas.ess_normalized(a(1000.0, 1000.0)) == pytest.approx(1.0)  # no overflow


def test_ess_of_unequal_weights():
    # w = [1, 3]: (1 + 3)^2 / (2 * (1 + 9)) = 16 / 20
    assert formulas.ess_normalized(a(0.0, math.log(3.0))) == pytest.approx(0.8)
    assert math.isnan(formulas.ess_normalized(a()))


# --- summarize / per_sequence ---


def test_token_mean_and_sequence_mean_differ_for_unequal_lengths():
    ref = [a(-1.0), a(-2.0, -2.0, -2.0)]
    cand = [a(-1.3), a(-2.1, -2.1, -2.1)]  # r = 0.3 once, then r = 0.1 three times
    s = m.summarize(ref, cand)
    assert s["n_seqs"] == 2 and s["n_tokens"] == 4
    assert s["abs_dlogp_mean"] == pytest.approx((0.3 + 3 * 0.1) / 4)  # 0.15
    assert s["abs_dlogp_seqmean"] == pytest.approx((0.3 + 0.1) / 2)  # 0.2
    assert s["kl_k1_mean"] == pytest.approx(-(0.3 + 3 * 0.1) / 4)
    assert s["kl_k1_seqmean"] == pytest.approx(-(0.3 + 0.1) / 2)
    k3_03, k3_01 = math.exp(0.3) - 1.3, math.exp(0.1) - 1.1
    assert s["kl_k3_mean"] == pytest.approx((k3_03 + 3 * k3_01) / 4)
    assert s["kl_k3_seqmean"] == pytest.approx((k3_03 + k3_01) / 2)
    assert s["kl_k2_mean"] == pytest.approx((0.09 / 2 + 3 * 0.01 / 2) / 4)
    # candidate entropy estimate: -mean(cand)
    assert s["entropy_cand_mc"] == pytest.approx((1.3 + 3 * 2.1) / 4)
    assert s["entropy_cand_mc_seqmean"] == pytest.approx((1.3 + 2.1) / 2)
    ps = m.per_sequence(ref, cand)
    np.testing.assert_allclose(ps["abs_dlogp_mean"], [0.3, 0.1])
    assert ps["n_tokens"].tolist() == [1, 3]


def test_abs_dprob_and_ess_in_summary():
    ref = [a(math.log(0.5), math.log(0.2))]
    cand = [a(math.log(0.4), math.log(0.2))]
    s = m.summarize(ref, cand)
    assert s["abs_dprob_mean"] == pytest.approx((0.1 + 0.0) / 2)
    # w = [0.5/0.4, 1] = [1.25, 1]: 2.25^2 / (2 * (1.5625 + 1))
    assert s["ess_norm"] == pytest.approx(2.25**2 / (2 * 2.5625))


def test_percentiles_of_abs_dlogp():
    # |r| = 0.00, 0.01, ..., 0.99; numpy's linear interpolation: p50 at index 49.5, p99 at 98.01.
    r = np.arange(100) / 100
    s = m.summarize([-1.0 - r], [np.full(100, -1.0)])
    assert s["abs_dlogp_p50"] == pytest.approx(0.495)
    assert s["abs_dlogp_p99"] == pytest.approx(0.98 + 0.01 * 0.01)
    assert s["abs_dlogp_max"] == pytest.approx(0.99)


def test_reference_entropy_token_and_sequence_means():
    ref = [a(-1.0), a(-1.0, -1.0, -1.0)]
    ent = [a(2.0), a(1.0, 1.0, 1.0)]
    s = m.summarize(ref, ref, ref_entropy=ent)
    assert s["entropy_ref_mean"] == pytest.approx((2.0 + 3.0) / 4)
    assert s["entropy_ref_seqmean"] == pytest.approx((2.0 + 1.0) / 2)
    assert "entropy_ref_mean" not in m.summarize(ref, ref)


def test_masked_tokens_are_counted_and_excluded():
    ref = [a(-0.5, -np.inf, -1.0), a(-0.2)]
    cand = [a(-0.6, -2.0, -1.0), a(-np.inf)]
    ent = [a(1.0, 5.0, 2.0), a(9.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # masking must not go through NaN/inf arithmetic warnings
        s = m.summarize(ref, cand, ref_entropy=ent)
        ps = m.per_sequence(ref, cand, ref_entropy=ent)
    assert s["n_tokens"] == 4 and s["n_masked_tokens"] == 2
    assert s["masked_token_rate"] == pytest.approx(0.5)
    assert s["abs_dlogp_mean"] == pytest.approx((0.1 + 0.0) / 2)
    assert s["entropy_cand_mc"] == pytest.approx((0.6 + 1.0) / 2)
    assert s["entropy_ref_mean"] == pytest.approx((1.0 + 2.0) / 2)  # same tokens as cand
    # the second sequence has no valid token: left out of sequence means, not counted as 0
    assert s["abs_dlogp_seqmean"] == pytest.approx(0.05)
    # first sequence: mean r = (0.1 + 0) / 2 = 0.05 > log(1.0004); the second one is left out
    assert s["clip_rate_seq"] == pytest.approx(1.0)
    assert m.summarize(ref, cand, seq_clip=ClipRange())["clip_rate_seq"] == pytest.approx(0.0)
    for k, v in s.items():
        assert np.isfinite(v), k
    assert ps["n_masked_tokens"].tolist() == [1, 1]
    assert math.isnan(ps["kl_k3_mean"][1]) and math.isnan(ps["clipped_seq"][1])
    # the masked tokens: ref -inf with cand -2.0 (reference excludes a sampled token), and
    # cand -inf (the engine's own sampled token at probability 0)
    assert (s["n_ref_excluded"], s["n_cand_excluded"]) == (1, 1)
    assert s["ref_excluded_rate"] == pytest.approx(1 / 4)


def test_impossible_tokens_are_counted_by_kind():
    inf = np.inf
    # seq 0: ok, ref-excluded, ok, both -inf (counted as cand-excluded)
    # seq 1: cand-excluded, ref-excluded
    # seq 2: empty; seq 3: two ref-excluded tokens and one ok
    ref = [a(-0.5, -inf, -1.0, -inf), a(-0.2, -inf), a(), a(-inf, -inf, -3.0)]
    cand = [a(-0.6, -2.0, -1.0, -inf), a(-inf, -0.3), a(), a(-0.1, -0.2, -3.2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = m.summarize(ref, cand)
        ps = m.per_sequence(ref, cand)
    assert s["n_tokens"] == 9
    assert s["n_ref_excluded"] == 4
    assert s["ref_excluded_rate"] == pytest.approx(4 / 9)
    assert s["n_cand_excluded"] == 2
    assert s["n_masked_tokens"] == 4 + 2
    assert s["masked_token_rate"] == pytest.approx(6 / 9)
    assert ps["n_ref_excluded"].tolist() == [1, 1, 0, 2]
    assert ps["n_cand_excluded"].tolist() == [1, 1, 0, 0]
    np.testing.assert_allclose(ps["ref_excluded_rate"][[0, 1, 3]], [1 / 4, 1 / 2, 2 / 3])
    assert math.isnan(ps["ref_excluded_rate"][2])  # no token: no rate
    # the means still ignore them: valid r = 0.1, 0.0 (seq 0) and 0.2 (seq 3)
    assert s["abs_dlogp_mean"] == pytest.approx((0.1 + 0.0 + 0.2) / 3)
    np.testing.assert_allclose(ps["abs_dlogp_mean"][[0, 3]], [0.05, 0.2])
    assert np.isnan(ps["abs_dlogp_mean"][[1, 2]]).all()


def test_no_impossible_tokens_counts_zero():
    s = m.summarize([a(-1.0, -2.0)], [a(-1.1, -2.0)])
    assert (s["n_ref_excluded"], s["n_cand_excluded"], s["ref_excluded_rate"]) == (0, 0, 0.0)
    ps = m.per_sequence([a(-1.0, -2.0)], [a(-1.1, -2.0)])
    assert ps["n_ref_excluded"].tolist() == [0] and ps["ref_excluded_rate"].tolist() == [0.0]


def test_all_masked_gives_nan_metrics_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = m.summarize([a(-np.inf)], [a(-1.0)])
    assert s["n_tokens"] == 1 and s["n_masked_tokens"] == 1
    assert math.isnan(s["kl_k3_mean"]) and math.isnan(s["ess_norm"])


@pytest.mark.parametrize("ref,cand", [([], []), ([a()], [a()])])
def test_empty_input_is_nan_not_zero(ref, cand):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = m.summarize(ref, cand, ref_entropy=[a() for _ in ref])
    assert s["n_tokens"] == 0 and s["n_seqs"] == len(ref)
    counts = {"n_seqs", "n_tokens", "n_masked_tokens", "n_ref_excluded", "n_cand_excluded"}
    for k, v in s.items():
        if k not in counts:
            assert math.isnan(v), k
    assert m.per_sequence([], [])["kl_k3_mean"].shape == (0,)


def test_bad_input_raises():
    with pytest.raises(ValueError):
        m.summarize([a(-1.0)], [a(-1.0, -2.0)])
    with pytest.raises(ValueError):
        m.summarize([a(-1.0)], [])
    with pytest.raises(ValueError):
        m.summarize([a(np.nan)], [a(-1.0)])
    with pytest.raises(ValueError):
        m.summarize([a(-1.0)], [a(-1.0)], ref_entropy=[a(np.nan)])


def test_excluded_rate_is_the_ref_excluded_share_less_ties_at_the_cut():
    inf = np.inf
    # seq 0: token 1 excluded by ref alone; token 2 is -inf on both sides (the engine's own
    # bug, n_cand_excluded: never an excluded token, tied or not); token 3 excluded but tied
    ref = [a(-0.5, -inf, -inf, -inf), a(), a(-inf, -1.0)]
    cand = [a(-0.6, -2.0, -inf, -1.0), a(), a(-0.3, -1.1)]
    ties = [np.array([False, False, True, True]), np.zeros(0, bool), np.array([False, True])]
    rates, n_tied = m.excluded_rates(ref, cand, ties)
    np.testing.assert_allclose(rates[[0, 2]], [1 / 4, 1 / 2])
    assert math.isnan(rates[1]) and n_tied == 1  # no token: no rate
    # without ties every ref-excluded token counts: per_sequence's ref_excluded_rate
    rates, n_tied = m.excluded_rates(ref, cand)
    np.testing.assert_array_equal(rates, m.per_sequence(ref, cand)["ref_excluded_rate"])
    np.testing.assert_allclose(rates[[0, 2]], [2 / 4, 1 / 2])
    assert n_tied == 0
    with pytest.raises(ValueError, match="boundary_tie"):
        m.excluded_rates(ref, cand, ties[:2])
    with pytest.raises(ValueError, match="cand"):
        m.excluded_rates(ref, [a(-1.0), a(), a(-1.0)])
