"""Category verdict logic on synthetic samples (the real-engine evidence is in test_engine_*)."""

import numpy as np

from parity.checks import check_logprobs, check_rl, expected, model_config_diff
from parity.engines.base import Sequence
from parity.metrics import ClipRange
from parity.reference import RefScore


def fake(n_seqs, length, cand_shift, raw_shift=0.5, seed=0):
    rng = np.random.default_rng(seed)
    seqs, scores = [], []
    for i in range(n_seqs):
        processed = -rng.uniform(0.1, 2.0, length)
        cand = processed + rng.normal(0, 0.01, length) + cand_shift
        seqs.append(Sequence(i, 0, [1], list(range(length)), list(cand)))
        scores.append(RefScore(processed - raw_shift, processed, np.full(length, 1.0)))
    return seqs, scores


TOL = {"abs_dlogp_mean": 0.06, "kl_k3_mean": 0.01, "abs_dlogp_p99": 0.6}


def test_logprobs_pass_when_close():
    seqs, scores = fake(30, 20, 0.0)
    verdict, _ = check_logprobs(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "pass" and verdict.diagnosis is None


def test_logprobs_raw_diagnosis():
    # The candidate equals the raw logprobs (processed - 0.5): closer to raw than processed.
    seqs, scores = fake(30, 20, -0.5)
    verdict, detail = check_logprobs(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "fail" and verdict.diagnosis == "raw_logprobs"
    assert "logprobs_mode=processed_logprobs" in verdict.message
    assert expected(verdict, "fail", "raw_logprobs")
    assert not expected(verdict, "pass", None)


def test_logprobs_too_few_tokens_is_inconclusive():
    seqs, scores = fake(30, 2, 0.0)
    verdict, _ = check_logprobs(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "inconclusive"
    assert not expected(verdict, "pass", None)


def test_rl_non_inferiority_and_model_mismatch():
    base = fake(40, 20, 0.0, seed=1)
    worse = fake(40, 20, 0.3, seed=2)
    margins = {"kl_k3": 0.01, "abs_dlogp": 0.03, "clip_rate": 0.02}
    runs = {"baseline": (*base, None), "candidate": (*worse, None)}
    verdict, detail = check_rl(runs, margins, ClipRange(), 100)
    assert verdict.outcome == "fail"
    same = {"baseline": (*base, None), "candidate": (*fake(40, 20, 0.0, seed=3), None)}
    assert check_rl(same, margins, ClipRange(), 100)[0].outcome == "pass"
    configs = {"baseline": {"key": {"model.rope_theta": 10000.0}},
               "candidate": {"key": {"model.rope_theta": 100000.0}}}
    verdict, detail = check_rl(same, margins, ClipRange(), 100, configs)
    assert verdict.outcome == "fail" and verdict.diagnosis == "model_mismatch"
    assert "model.rope_theta" in detail["model_config_diff"]
    assert model_config_diff({"a": configs["baseline"], "b": configs["baseline"]}) == {}
