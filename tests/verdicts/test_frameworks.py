"""parity.verdicts.frameworks: each framework's numbers against a hand computation, each gate met
and not met, and the gates as findings that pass and fail (the negative controls)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from parity.verdicts import core
from parity.verdicts import frameworks as fw

# Two sequences; r = trainer - engine = [0.1, 0.0] and [0.2].
TRAINER = [np.array([-1.0, -2.0]), np.array([-0.5])]
ENGINE = [np.array([-1.1, -2.0]), np.array([-0.7])]
R = np.array([0.1, 0.0, 0.2])


def test_nemo_rl_by_hand():
    n = fw.compute(TRAINER, ENGINE)["nemo-rl"]
    assert n["token_mult_prob_error"] == pytest.approx(
        (math.exp(0.1) + 1.0 + math.exp(0.2)) / 3, rel=1e-12
    )
    k3 = [math.exp(x) - 1 - x for x in R]
    assert n["gen_kl_error"] == pytest.approx(sum(k3) / 3, rel=1e-12)
    k3_swapped = [math.exp(-x) - 1 + x for x in R]
    assert n["policy_kl_error"] == pytest.approx(sum(k3_swapped) / 3, rel=1e-12)


def test_prime_rl_by_hand_with_entropy():
    k3 = np.array([math.exp(x) - 1 - x for x in R])
    ent = [np.array([1.0, 3.0]), np.array([2.0])]
    p = fw.compute(TRAINER, ENGINE, ent)["prime-rl"]
    assert p["mismatch_kl_mean"] == pytest.approx(k3.mean(), rel=1e-12)
    assert p["mismatch_kl_std"] == pytest.approx(k3.std(), rel=1e-12)
    assert p["mismatch_kl_max"] == pytest.approx(k3.max(), rel=1e-12)
    assert p["kl_ent_ratio"] == pytest.approx(k3.mean() / 2.0, rel=1e-12)
    assert "kl_ent_ratio" not in fw.compute(TRAINER, ENGINE)["prime-rl"]


def test_verl_by_hand():
    v = fw.compute(TRAINER, ENGINE)["verl"]
    w = np.exp(R)  # all inside [1/2, 2]: the clamp changes nothing
    assert v["rollout_is_mean"] == pytest.approx(w.mean(), rel=1e-12)
    assert v["rollout_is_std"] == pytest.approx(w.std(), rel=1e-9)
    assert v["rollout_is_eff_sample_size"] == pytest.approx(
        1 / np.mean((w / (w.mean() + 1e-8)) ** 2), rel=1e-12
    )
    assert v["kl"] == pytest.approx(-R.mean(), rel=1e-12)
    assert v["k3_kl"] == pytest.approx(np.mean(np.exp(R) - 1 - R), rel=1e-12)
    # per-sequence mean logprobs: trainer -1.5, -0.5; engine -1.55, -0.7
    assert v["training_ppl"] == pytest.approx((math.exp(1.5) + math.exp(0.5)) / 2, rel=1e-12)
    assert v["rollout_ppl"] == pytest.approx((math.exp(1.55) + math.exp(0.7)) / 2, rel=1e-12)
    assert v["ppl_ratio"] == pytest.approx((math.exp(-0.05) + math.exp(-0.2)) / 2, rel=1e-12)
    assert v["chi2_token"] == pytest.approx(np.mean(w**2) - 1, rel=1e-12)
    assert v["chi2_seq"] == pytest.approx((math.exp(0.2) + math.exp(0.4)) / 2 - 1, rel=1e-12)
    assert v["rollout_is_ratio_fraction_high"] == v["rollout_is_ratio_fraction_low"] == 0.0


def test_verl_clamps_std_and_ess_to_the_threshold_but_not_the_mean():
    # r = log 4 and log(1/4): weights 4 and 1/4, clamped to 2 and 1/2 for std and ESS.
    tr, en = [np.array([math.log(4.0), -math.log(4.0)])], [np.zeros(2)]
    v = fw.compute(tr, en)["verl"]
    assert v["rollout_is_mean"] == pytest.approx((4 + 0.25) / 2)
    assert v["rollout_is_std"] == pytest.approx(0.75)  # of [2, 0.5]
    assert v["rollout_is_eff_sample_size"] == pytest.approx(
        1 / np.mean((np.array([2, 0.5]) / 1.25) ** 2)
    )
    assert v["rollout_is_ratio_fraction_high"] == v["rollout_is_ratio_fraction_low"] == 0.5


def test_is_correction_shares_by_hand():
    # seq 0: r = [ln 2.5, 0] (TIS truncates 1 token, ICEPOP masks it; exp(sum r) = 2.5 kept);
    # seq 1: r = [ln 0.4, ln 0.6] (ICEPOP masks the first; exp(sum) = 0.24 < 1/3: masked);
    # seq 2: r = [0.1] (nothing).
    r = [np.log([2.5, 1.0]), np.log([0.4, 0.6]), np.array([0.1])]
    c = fw.compute(r, [np.zeros_like(x) for x in r])["is-correction"]
    assert c["tis_token_truncated"] == pytest.approx(1 / 5)
    assert c["tis_sequence_truncated"] == pytest.approx(1 / 3)
    assert c["icepop_token_masked"] == pytest.approx(2 / 5)
    assert c["icepop_sequence_masked"] == pytest.approx(2 / 3)
    assert c["seq_mask_sequence_masked"] == pytest.approx(1 / 3)


def test_trl_by_hand():
    # sequence log ratios: 0.1 (kept), 0.2 (kept); and ln 4 (masked: 4 > 3)
    t = fw.compute(TRAINER, ENGINE)["trl"]
    assert t["sampling_logp_difference_mean"] == pytest.approx(0.1)
    assert t["sampling_logp_difference_max"] == pytest.approx(0.2)
    assert t["importance_sampling_ratio_min"] == pytest.approx(math.exp(0.1))
    assert t["importance_sampling_ratio_mean"] == pytest.approx((math.exp(0.1) + math.exp(0.2)) / 2)
    assert t["sequence_masked"] == 0.0
    t = fw.compute([*TRAINER, np.array([math.log(4.0)])], [*ENGINE, np.zeros(1)])["trl"]
    assert t["sequence_masked"] == pytest.approx(1 / 3)
    assert t["importance_sampling_ratio_min"] == 0.0
    assert t["importance_sampling_ratio_max"] == pytest.approx(math.exp(0.2))


def test_non_finite_tokens_are_dropped_and_counted():
    tr = [np.array([-1.0, -np.inf, -2.0]), np.array([-np.inf])]
    en = [np.array([-1.0, -3.0, -2.0]), np.array([-1.0])]
    n = fw.compute(tr, en)
    assert (n["n_tokens"], n["n_sequences"], n["n_dropped"]) == (2, 1, 2)
    assert n["nemo-rl"]["token_mult_prob_error"] == 1.0
    empty = fw.compute([np.array([-np.inf])], [np.array([-1.0])])
    assert empty["n_tokens"] == 0 and empty["verl"] == {}


def _numbers(r: float, n: int = 400) -> dict:
    """n tokens in 40 sequences, each with log ratio +r or -r alternately."""
    rr = np.where(np.arange(n) % 2 == 0, r, -r)
    return fw.with_gates(fw.compute(list(rr.reshape(40, -1)), list(np.zeros((40, n // 40)))))


def test_gates_met_on_close_logprobs_and_not_on_far_ones():
    close, far = _numbers(0.01), _numbers(0.5)
    for name in fw.GATEABLE:
        assert all(row["met"] for row in close["gates"][name]), name
    assert not any(row["met"] for row in far["gates"]["nemo-rl"])
    assert not far["gates"]["prime-rl"][0]["met"]
    # verl's warnings are looser: a symmetric +-0.5 gap keeps every one quiet
    assert all(row["met"] for row in far["gates"]["verl"])
    assert not all(row["met"] for row in _numbers(1.0)["gates"]["verl"])


def test_gate_findings_pass_on_close_and_fail_on_far_logprobs():
    names = list(fw.GATEABLE)
    passed = fw.findings(_numbers(0.01), names)
    assert [f.name for f in passed] == [n for g in fw.GATEABLE for n in fw.FINDINGS[g]]
    assert {f.outcome for f in passed} == {"pass"}
    assert core.combine(passed) == "pass"
    failed = {f.name: f for f in fw.findings(_numbers(0.5), names)}
    assert failed["nemo_rl_token_mult_prob_error"].outcome == "fail"
    assert failed["nemo_rl_token_mult_prob_error"].value == pytest.approx(math.exp(0.5))
    assert failed["nemo_rl_gen_kl_error"].outcome == "fail"
    assert failed["prime_rl_mismatch_kl"].outcome == "fail"
    # far: weights e^0.5 / e^-0.5 are inside [1/2, 2]; chi2_token = cosh(1) - 1 = 0.54: verl
    # stays healthy at 0.5 and warns at 1.0 (IS std, chi2_token).
    assert failed["verl_health_warnings"].outcome == "pass"
    verl_far = fw.findings(_numbers(1.0), ["verl"])[0]
    assert verl_far.outcome == "fail" and verl_far.value >= 1
    assert "chi2_token" in verl_far.note
    for f in [*passed, *failed.values()]:
        gate = next(g for g in fw.FINDINGS if f.name in fw.FINDINGS[g])
        assert fw.FINDINGS[gate][f.name] == f.kind


def test_gate_on_nothing_measured_is_inconclusive():
    empty = fw.with_gates(fw.compute([np.array([-np.inf])], [np.array([-1.0])]))
    found = fw.findings(empty, list(fw.GATEABLE))
    assert {f.outcome for f in found} == {"inconclusive"}
    assert all(row["met"] is None for row in empty["gates"]["nemo-rl"])


def test_order_and_names():
    assert fw.order("verl")[0] == "verl" and set(fw.order("verl")) == set(fw.FRAMEWORKS)
    assert fw.order("trl")[0] == "trl" and fw.order("parity") == fw.order(None) == fw.FRAMEWORKS
    assert fw.check_names(["verl", "nemo", "is-correction"]) == ["nemo", "is-correction"]
