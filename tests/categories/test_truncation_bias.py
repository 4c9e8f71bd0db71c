"""The logprobs category under the trainer's semantics: truncation_bias on synthetic gaps (the
engine's processed logprobs against a tempered trainer), its negative controls (gaps that are
not the truncation offset), and T = 1 without truncation (the raw diagnosis skipped, in logprobs
and rl)."""

import dataclasses
from types import SimpleNamespace

import numpy as np

from parity.categories import logprobs, rl
from parity.engines.base import SamplingSpec, Sequence
from parity.trainer.reference import RefScore
from parity.trainer.semantics import trainer_view
from parity.verdicts.formulas import ClipRange

TOL = logprobs.Logprobs.tolerances  # the shipped tolerances
TRUNCATED = SamplingSpec(temperature=0.7, top_p=0.9, top_k=50)


def synthetic(engine: str, n_seqs=40, length=30, seed=0, cut=True):
    """Reference scores with a per-token kept mass, and an engine returning `engine`:
    "processed" (tempered - log kept mass + noise), "tempered" (+ noise), "offset" (tempered +
    a constant 0.25 unrelated to the kept mass) or "shuffled" (tempered - another token's log
    kept mass)."""
    rng = np.random.default_rng(seed)
    seqs, scores = [], []
    for i in range(n_seqs):
        tempered = -rng.uniform(0.05, 2.0, length)
        log_kept = np.log(rng.uniform(0.6, 0.99, length)) if cut else np.zeros(length)
        processed = tempered - log_kept
        raw = tempered * 0.7 - 0.3
        noise = rng.normal(0, 0.005, length)
        cand = {
            "processed": processed + noise,
            "tempered": tempered + noise,
            "offset": tempered + 0.25 + noise,
            "shuffled": tempered - rng.permutation(log_kept) * 3 + noise,
        }[engine]
        seqs.append(Sequence(i, 0, [1], list(range(length)), list(cand)))
        scores.append(
            RefScore(raw, processed, np.ones(length), np.zeros(length, bool), tempered, log_kept)
        )
    return seqs, scores


def test_truncation_bias_named_with_mean_bias_and_fix():
    seqs, scores = synthetic("processed")
    verdict, detail = logprobs.check(seqs, scores, TOL, ClipRange(), 100, "tempered", TRUNCATED)
    assert verdict.outcome == "fail" and verdict.diagnosis == "truncation_bias"
    kept = np.concatenate([r.log_kept_mass for r in scores])
    assert detail["truncation"]["mean_bias"] == -kept.mean()
    assert detail["truncation"]["residual_outcome"] == "pass"
    assert "top_p = 1 and top_k off" in verdict.message
    assert 'semantics = "processed"' in verdict.message
    assert "truncation_bias" in logprobs.CATEGORY.diagnoses


def test_same_engine_passes_a_replaying_trainer():
    seqs, scores = synthetic("processed")
    verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100, "processed", TRUNCATED)
    assert verdict.outcome == "pass" and verdict.diagnosis is None


def test_no_truncation_no_bias():
    """top_p 1 and top_k off: the kept mass is 1, the tempered trainer matches."""
    seqs, scores = synthetic("processed", cut=False)
    sampling = SamplingSpec(temperature=0.7)
    verdict, detail = logprobs.check(seqs, scores, TOL, ClipRange(), 100, "tempered", sampling)
    assert verdict.outcome == "pass" and "truncation" not in detail


def test_gaps_that_are_not_the_truncation_offset_are_not_truncation_bias():
    """Negative controls: a constant offset, and offsets of the right size on the wrong tokens,
    fail as processed_mismatch, never truncation_bias."""
    for engine in ("offset", "shuffled"):
        seqs, scores = synthetic(engine)
        verdict, detail = logprobs.check(seqs, scores, TOL, ClipRange(), 100, "tempered", TRUNCATED)
        assert verdict.outcome == "fail", engine
        assert verdict.diagnosis == "processed_mismatch", engine
        assert detail["truncation"]["residual_outcome"] == "fail"


def test_a_tempered_engine_passes_a_tempered_trainer():
    seqs, scores = synthetic("tempered")
    verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100, "tempered", TRUNCATED)
    assert verdict.outcome == "pass"


def test_t1_without_truncation_skips_only_the_raw_diagnosis():
    """At T = 1 without truncation the bounds still fail (here a bf16-like shift), the
    raw-vs-processed diagnosis is skipped and the message says so."""
    seqs, scores = synthetic("offset", cut=False)
    for r in scores:
        r.raw_logprob = r.tempered_logprob.copy()  # raw = tempered = processed at T = 1
    t1 = SamplingSpec(temperature=1.0)
    verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100, "tempered", t1)
    assert verdict.outcome == "fail" and verdict.diagnosis == "processed_mismatch"
    assert "diagnosis is skipped" in verdict.message
    seqs, scores = synthetic("tempered", cut=False)
    verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100, "tempered", t1)
    assert verdict.outcome == "pass" and "diagnosis is skipped" in verdict.message


def shifted(seq, by):
    return dataclasses.replace(seq, logprobs=list(np.asarray(seq.logprobs) + by))


def test_offset_finding_fails_a_one_signed_gap_and_passes_noise():
    """offset_seqmean at the shipped limit (0.02): a one-signed 0.05 gap (the size of the
    truncation offset on SmolLM2) fails in either direction although |dlogp| (0.05 < 0.06)
    passes; zero-mean noise of the same size passes."""
    for shift in (0.05, -0.05):
        seqs, scores = synthetic("tempered", cut=False)
        seqs = [shifted(s, shift) for s in seqs]
        verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100, "tempered", TRUNCATED)
        by = {f.name: f.outcome for f in verdict.findings}
        assert by["offset_seqmean"] == "fail" and by["abs_dlogp_seqmean"] == "pass", shift
        assert ("above" if shift > 0 else "below") in verdict.findings[0].note
    seqs, scores = synthetic("tempered", cut=False)
    rng = np.random.default_rng(9)
    seqs = [shifted(s, rng.choice([-0.05, 0.05], 30)) for s in seqs]
    verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100, "tempered", TRUNCATED)
    assert verdict.outcome == "pass"


def test_rl_at_t1_skips_the_raw_diagnosis_and_says_so():
    base = synthetic("tempered", cut=False)
    worse = synthetic("offset", cut=False)
    for r in worse[1]:
        r.raw_logprob = r.tempered_logprob.copy()
    runs = {"baseline": (*base, None), "candidate": (*worse, None)}
    view = {k: (s, [trainer_view(r, "tempered") for r in sc], w) for k, (s, sc, w) in runs.items()}
    verdict, _ = rl.check(view, rl.RL.margins, ClipRange(), 100, distinct=False)
    assert verdict.outcome == "fail" and verdict.diagnosis == "rl_divergence"
    assert "diagnosis is skipped" in verdict.message


def _rl_pair(engine: str, semantics: str, cut=True, raw_far=False):
    """An rl pair whose two engines both return `engine` logprobs (synthetic) against the
    trainer under `semantics`, judged as rl.RL.judge does: the pair, then the candidate's
    truncation offset (rl.with_truncation). raw_far: the raw logprobs 1 nat below the tempered
    ones (no engine is then closer to raw)."""
    base, cand = synthetic(engine, seed=1, cut=cut), synthetic(engine, seed=2, cut=cut)
    for r in base[1] + cand[1] if raw_far else []:
        r.raw_logprob = r.tempered_logprob - 1.0
    runs = {
        role: (seqs, [trainer_view(r, semantics) for r in scores], None)
        for role, (seqs, scores) in (("baseline", base), ("candidate", cand))
    }
    verdict, detail = rl.check(runs, rl.RL.margins, ClipRange(), 100)
    pair = verdict.outcome
    sc = SimpleNamespace(clip=ClipRange(), min_tokens=100, sampling=TRUNCATED)
    rl.with_truncation(verdict, detail, cand[0], cand[1], semantics, sc, dict(TOL))
    return pair, verdict, detail


def test_rl_pair_against_a_tempered_trainer_fails_truncation_bias():
    # Both engines carry the same -log(kept mass) bias, so none of the pair's own findings
    # fails; the candidate's offset to the tempered trainer fails, diagnosed as the logprobs
    # category does, with the mean bias.
    pair, verdict, detail = _rl_pair("processed", "tempered")
    assert pair != "fail"
    assert verdict.outcome == "fail" and verdict.diagnosis == "truncation_bias"
    offset = next(f for f in verdict.findings if f.name == "offset_seqmean")
    assert offset.outcome == "fail" and "sits above" in offset.note
    assert detail["truncation"]["mean_bias"] > 0.02
    assert "top_p = 1 and top_k off" in verdict.message and "candidate against" in verdict.message
    assert rl.RL.diagnoses["truncation_bias"] == logprobs.Logprobs.diagnoses["truncation_bias"]


def test_rl_pair_without_the_bias_keeps_its_verdict():
    # A replaying trainer, or nothing cut: no truncation offset is judged; engines returning
    # tempered logprobs against a tempered trainer pass it.
    for engine, semantics, cut in (
        ("processed", "processed", True),
        ("processed", "tempered", False),
        ("tempered", "tempered", True),
    ):
        pair, verdict, detail = _rl_pair(engine, semantics, cut)
        assert pair == verdict.outcome == "pass", (engine, semantics, cut, verdict.message)
        judged = "offset_seqmean" in {f.name for f in verdict.findings}
        assert judged == ("truncation" in detail) == (semantics == "tempered" and cut)


def test_rl_pair_with_another_one_signed_gap_is_diagnosed_as_the_logprobs_check_does():
    # Both engines 0.25 above a tempered trainer, not by the kept mass: the candidate's offset
    # fails, the residual too, so not truncation_bias: processed_mismatch, the logprobs
    # category's diagnosis of the same tokens.
    _, verdict, detail = _rl_pair("offset", "tempered", raw_far=True)
    assert verdict.outcome == "fail" and verdict.diagnosis == "processed_mismatch"
    assert detail["truncation"]["residual_outcome"] == "fail"
    assert "candidate against the trainer" in verdict.message
