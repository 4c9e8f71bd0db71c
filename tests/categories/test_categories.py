"""Category verdict logic on synthetic samples (the real-engine evidence is in test_engine_*),
and the meta-test: every finding every category declares has an input that makes it FAIL."""

from types import SimpleNamespace

import numpy as np
import pytest

from parity import categories
from parity.categories import (
    _common,
    _runtime_probes,
    lm_head,
    logprobs,
    rl,
    runtime,
    weight_update,
)
from parity.engines.base import SamplingSpec, Sequence
from parity.report import frameworks as report_frameworks
from parity.run.scenario_fields import DEFAULT_MIN_TOKENS
from parity.trainer.reference import RefScore
from parity.trainer.semantics import trainer_view
from parity.verdicts import core
from parity.verdicts import frameworks as fw
from parity.verdicts.formulas import ClipRange
from tests.categories.test_truncation_bias import TRUNCATED, synthetic

TOL = dict(logprobs.CATEGORY.tolerances)  # the shipped ones


def fake(
    n_seqs,
    length,
    cand_shift,
    raw_shift=0.5,
    seed=0,
    excluded=0,
    entropy=1.0,
    outliers=0.0,
    samples=1,
    rank=None,
    distance=None,
):
    """Sequences and reference scores: cand = processed + noise + shift; `excluded` tokens per
    sequence get a processed logprob of -inf (the trainer excludes the sampled token), at cut
    rank `rank` (1: the first token past the cut; None: the ranks unknown)."""
    rng = np.random.default_rng(seed)
    seqs, scores = [], []
    for i in range(n_seqs):
        processed = -rng.uniform(0.1, 2.0, length)
        cand = processed + rng.normal(0, 0.01, length) + cand_shift
        if outliers:
            cand[: max(1, length // 20)] += outliers
        ref = processed.copy()
        ref[:excluded] = -np.inf
        seqs.append(Sequence(i // samples, i % samples, [1], list(range(length)), list(cand)))
        score = RefScore(processed - raw_shift, ref, np.full(length, entropy))
        if rank is not None:
            score.cut_rank = np.where(np.isneginf(ref), float(rank), 0.0)
        if distance is not None:
            score.cut_distance = np.where(np.isneginf(ref), float(distance), 0.0)
        scores.append(score)
    return seqs, scores


def test_logprobs_pass_when_close():
    seqs, scores = fake(30, 20, 0.0)
    verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "pass" and verdict.diagnosis is None


def test_logprobs_raw_diagnosis():
    seqs, scores = fake(30, 20, -0.5)
    verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "fail" and verdict.diagnosis == "raw_logprobs"
    assert "logprobs_mode=processed_logprobs" in verdict.message
    assert core.expected(verdict, "fail", "raw_logprobs")
    assert not core.expected(verdict, "pass", None)


def test_logprobs_too_few_tokens_is_inconclusive():
    seqs, scores = fake(30, 2, 0.0)
    verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "inconclusive"
    assert [p.name for p in verdict.preconditions if not p.met] == ["n_tokens"]


def test_impossible_tokens_fail_even_when_the_rest_matches():
    # Half the sampled tokens are excluded by the trainer: the remaining ones match exactly,
    # which used to pass; an excluded token is the strongest possible mismatch.
    seqs, scores = fake(30, 20, 0.0, excluded=10)
    verdict, detail = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "fail" and verdict.diagnosis == "support_mismatch"
    assert detail["vs_processed"]["n_ref_excluded"] == 300
    assert "top_k/top_p" in verdict.message


def test_excluded_rate_tolerates_rare_boundary_flips_but_not_a_support_mismatch():
    # 1 excluded token in 40 x 40 (0.06%, as numerics alone give: docs/measurements.md#excluded-tokens)
    # passes; 1 in every 40-token sequence (2.5%) fails; ties at the cut never count.
    seqs, scores = fake(40, 40, 0.0)
    scores[0].processed_logprob[0] = -np.inf
    verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "pass", verdict.message
    seqs, scores = fake(40, 40, 0.0, excluded=1)
    verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "fail" and verdict.diagnosis == "support_mismatch"
    for r in scores:
        r.boundary_tie = np.isneginf(r.processed_logprob)
    verdict, detail = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "pass" and detail["vs_processed"]["n_tied_excluded"] == 40


def test_first_tokens_past_the_cut_are_numerics_not_a_support_mismatch():
    # A bf16 engine moves the top-p cut by a token (docs/measurements.md#excluded-split): 1 in
    # 64 tokens (1.6%, above the 1% bound) the first past the cut is judged as numerics and
    # passes; the same tokens 3 past the cut are a sampler wider than the trainer's.
    seqs, scores = fake(40, 64, 0.0, excluded=1, rank=1)
    verdict, detail = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "pass", verdict.message
    assert detail["vs_processed"]["n_excluded_numerics"] == 40
    seqs, scores = fake(40, 64, 0.0, excluded=1, rank=3)
    verdict, detail = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "fail" and verdict.diagnosis == "support_mismatch"
    assert detail["vs_processed"]["n_excluded_numerics"] == 0
    # Many first tokens past the cut fail their own finding, not support_mismatch.
    seqs, scores = fake(40, 64, 0.0, excluded=4, rank=1)
    verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    failed = [f.name for f in verdict.findings if f.outcome == "fail"]
    assert failed == ["excluded_numerics_rate"] and verdict.diagnosis == "processed_mismatch"
    assert "no more than bf16 numerics" in verdict.message


def test_the_distance_past_the_cut_decides_numerics_over_the_rank():
    # V0's bf16 logits move a top-p cut by several tokens where the tail is flat (a few
    # percent of mass over many tokens: docs/measurements.md#excluded-split): the distance in
    # log-odds (cut_distance), not the rank, says whether numerics could have moved it.
    near = _common.NUMERICS_SPREAD * 0.9
    seqs, scores = fake(40, 64, 0.0, excluded=1, rank=5, distance=near)
    verdict, detail = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "pass", verdict.message
    assert detail["vs_processed"]["n_excluded_numerics"] == 40
    # The first token past the cut, but further than numerics move a cut: configuration.
    far = _common.NUMERICS_SPREAD * 1.5
    seqs, scores = fake(40, 64, 0.0, excluded=1, rank=1, distance=far)
    verdict, detail = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    assert verdict.outcome == "fail" and verdict.diagnosis == "support_mismatch"
    assert detail["vs_processed"]["n_excluded_numerics"] == 0


def test_an_engine_narrower_than_the_trainer_fails_its_offset_as_narrower_support():
    # The reverse direction: an engine renormalising over a smaller set than a replaying
    # trainer's reads log(trainer mass / engine mass) >= 0 above it on every token (here 0.05,
    # e.g. kept mass 0.9 vs 0.86) and never samples what only the trainer keeps: excluded_rate
    # reads 0 by construction, offset_seqmean fails, diagnosed narrower_support.
    truncated = SamplingSpec(temperature=0.7, top_p=0.9, top_k=50)
    seqs, scores = fake(40, 40, 0.05, seed=2)
    verdict, detail = logprobs.check(seqs, scores, TOL, ClipRange(), 100, "processed", truncated)
    failed = {f.name for f in verdict.findings if f.outcome == "fail"}
    assert "offset_seqmean" in failed and "excluded_rate" not in failed
    assert verdict.diagnosis == "narrower_support" and "top_k/top_p" in verdict.message
    assert detail["vs_processed"]["n_ref_excluded"] == 0
    # Below the trainer (not a narrower support), or no truncation to narrow: not named so.
    seqs, scores = fake(40, 40, -0.05, seed=2)
    below, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100, "processed", truncated)
    seqs, scores = fake(40, 40, 0.05, seed=2)
    plain = SamplingSpec(temperature=0.7)
    untruncated, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100, "processed", plain)
    assert below.outcome == untruncated.outcome == "fail"
    assert "narrower_support" not in (below.diagnosis, untruncated.diagnosis)


def test_several_samples_per_prompt_resample_prompts():
    seqs, scores = fake(40, 20, 0.0, samples=4)
    verdict, _ = logprobs.check(seqs, scores, TOL, ClipRange(), 100)
    bound = next(f for f in verdict.findings if f.name == "abs_dlogp_seqmean")
    assert bound.test["unit"] == "prompt" and bound.test["n_cand"] == 10


def test_rl_paired_by_prompt():
    base, cand = fake(40, 20, 0.0, seed=1), fake(40, 20, 0.0, seed=3)
    runs = {"baseline": (*base, None), "candidate": (*cand, None)}
    verdict, _ = rl.check(runs, rl.RL.margins, ClipRange(), 100)
    assert verdict.outcome == "pass", verdict.message
    assert all(f.test["paired"] for f in verdict.findings if f.kind != "count_limit")


def test_rl_each_engine_gets_its_headline_metrics_with_intervals():
    """metrics.intervals (the report's opening V0 vs V1 table): per engine, each headline
    metric as the mean of prompt means inside its 90% interval; reward only with a reward."""
    base, cand = fake(40, 20, 0.0, seed=1), fake(40, 20, 0.3, seed=3)
    rewards = [float(i % 2) for i in range(40)]
    runs = {"baseline": (*base, rewards), "candidate": (*cand, None)}
    _, detail = rl.check(runs, rl.RL.margins, ClipRange(), 100)
    got = detail["intervals"]
    assert set(got["baseline"]) == set(rl.ENGINE_METRICS)
    assert set(got["candidate"]) == set(rl.ENGINE_METRICS) - {"reward"}
    for role in got:
        for v in got[role].values():
            assert v["ci_low"] <= v["mean"] <= v["ci_high"] and v["confidence"] == 0.9
    assert got["baseline"]["reward"]["mean"] == 0.5
    # The candidate's logprobs are 0.3 off: its |dlogp| interval lies above the baseline's.
    assert got["candidate"]["abs_dlogp"]["ci_low"] > got["baseline"]["abs_dlogp"]["ci_high"]


# ----------------------------------------------------------------------------- the meta-test
# For every category, every declared finding: an input that makes that finding fail, judged
# with the category's shipped tolerances and margins, the default clip range and the default
# minimum token count (what a scenario that overrides nothing gets); and every finding a
# category emits is declared in its `findings` dict, with the kind it declares.
SHIPPED = categories.registry()


def _shipped_tolerances(name: str) -> dict[str, float]:
    return dict(SHIPPED[name].tolerances)


def _shipped_margins(name: str) -> dict[str, float]:
    return dict(SHIPPED[name].margins)


def _failing_logprobs():
    out = {}
    for name, kwargs in {
        "offset_seqmean": dict(cand_shift=0.05),
        "abs_dlogp_seqmean": dict(cand_shift=0.3),
        "kl_k3_seqmean": dict(cand_shift=0.3),
        "abs_dlogp_p99": dict(cand_shift=0.0, outliers=2.0),
        "excluded_rate": dict(cand_shift=0.0, excluded=1),
        # 3 of every 40 tokens (7.5%) the first past the cut: numerics beyond their tolerance
        "excluded_numerics_rate": dict(cand_shift=0.0, excluded=3, rank=1),
    }.items():
        seqs, scores = fake(30, 40, seed=5, **kwargs)
        out[name] = logprobs.check(
            seqs, scores, _shipped_tolerances("logprobs"), ClipRange(), DEFAULT_MIN_TOKENS
        )[0]
    # One engine -inf, one trainer fill value, at the shipped tolerances.
    for name, (seqs, scores) in _vanishing(fake(30, 40, 0.0, seed=5)).items():
        out[name] = logprobs.check(
            seqs, scores, _shipped_tolerances("logprobs"), ClipRange(), DEFAULT_MIN_TOKENS
        )[0]
        assert out[name].diagnosis == "vanished_tokens", out[name].message
    return out


def _vanishing(made):
    """From a passing (sequences, scores): one with an engine logprob -inf (engine_neginf) and
    one with a trainer logprob of -1e4 (absurd_logprob, a mask's fill value)."""
    out = {}
    for name in ("engine_neginf", "absurd_logprob"):
        seqs, scores = fake(30, 40, 0.0, seed=5) if made is None else _copy(made)
        if name == "engine_neginf":
            seqs[3].logprobs[7] = -np.inf
        else:
            scores[3].processed_logprob[7] = -1e4
        out[name] = (seqs, scores)
    return out


def _copy(made):
    seqs, scores = made
    return (
        [
            Sequence(s.prompt_index, s.sample_index, [1], list(s.token_ids), list(s.logprobs))
            for s in seqs
        ],
        [RefScore(r.raw_logprob.copy(), r.processed_logprob.copy(), r.entropy) for r in scores],
    )


def _failing_rl():
    base = fake(40, 20, 0.0, seed=1, rank=1)  # no token excluded; cut ranks known (zeros)

    def check(cand, base_rewards=None, cand_rewards=None):
        runs = {"baseline": (*base, base_rewards), "candidate": (*cand, cand_rewards)}
        return rl.check(runs, _shipped_margins("rl"), ClipRange(), DEFAULT_MIN_TOKENS)[0]

    worse = check(fake(40, 20, 0.3, seed=1))
    out = {
        "kl_k3": worse,
        "abs_dlogp": worse,
        "clip_rate": worse,
        "entropy": check(fake(40, 20, 0.0, seed=1, entropy=2.0)),
        "reward": check(fake(40, 20, 0.0, seed=1), [0.0] * 40, [1.0] * 40),
        "excluded_rate": check(fake(40, 20, 0.0, seed=1, excluded=2)),
        "excluded_numerics_rate": check(fake(40, 20, 0.0, seed=1, excluded=3, rank=1)),
    }
    for name, made in _vanishing(fake(40, 20, 0.0, seed=3)).items():
        out[name] = check(made)
        assert out[name].diagnosis == "vanished_tokens", out[name].message
    out["offset_seqmean"] = _truncated_rl()
    return out


def _truncated_rl():
    """An rl pair against a tempered trainer at top_p 0.9 / top_k 50 whose engines both return
    processed logprobs (renormalised over the kept set): the candidate's offset fails."""
    base, cand = synthetic("processed", seed=1), synthetic("processed", seed=2)
    runs = {
        role: (seqs, [trainer_view(r, "tempered") for r in scores], None)
        for role, (seqs, scores) in (("baseline", base), ("candidate", cand))
    }
    verdict, detail = rl.check(runs, _shipped_margins("rl"), ClipRange(), DEFAULT_MIN_TOKENS)
    sc = SimpleNamespace(clip=ClipRange(), min_tokens=DEFAULT_MIN_TOKENS, sampling=TRUNCATED)
    tol = _shipped_tolerances("logprobs")
    rl.with_truncation(verdict, detail, *cand, "tempered", sc, tol)
    assert verdict.diagnosis == "truncation_bias", verdict.message
    return verdict


def _seq(i, tokens, lps, **kw):
    return Sequence(i, 0, [1], list(tokens), list(lps), **kw)


def _failing_runtime():
    out = {}
    base = {
        "enable_prefix_caching": False,
        "async_scheduling": False,
        "cascade_attention": "off",
        "logprobs_mode": "processed_logprobs",
        "head_dtype": "torch.float32",
    }
    changed = {
        "enable_prefix_caching": True,
        "async_scheduling": True,
        "cascade_attention": "allowed",
        "logprobs_mode": "raw_logprobs",
        "head_dtype": "torch.bfloat16",
    }
    for key, value in changed.items():
        out[f"match.{key}"] = runtime.judge_config_diff(base, {**base, key: value})[0]
    ref = [_seq(i, range(20), np.linspace(-3, -0.1, 20)) for i in range(25)]
    moved = [_seq(i, range(20), np.linspace(-3, -0.1, 20) + 0.3) for i in range(25)]
    findings, pre, _ = _runtime_probes.probe_findings(
        _runtime_probes.aligned(ref, moved),
        _shipped_tolerances("runtime"),
        DEFAULT_MIN_TOKENS,
        ClipRange(),
    )
    for f in findings:
        out[f.name] = core.Verdict(core.combine(findings, pre), None, "", findings, pre)
    same = [_seq(i, range(20), np.linspace(-3, -0.1, 20)) for i in range(25)]
    for name, value in (("engine_neginf", -np.inf), ("absurd_logprob", -1e4)):
        bad = [_seq(i, range(20), np.linspace(-3, -0.1, 20)) for i in range(25)]
        bad[2].logprobs[4] = value
        findings, pre, _ = _runtime_probes.probe_findings(
            _runtime_probes.aligned(same, bad), runtime.CATEGORY.tolerances, 100, ClipRange()
        )
        out[name] = core.Verdict(core.combine(findings, pre), None, "", findings, pre)
    return out


def _failing_lm_head():
    import torch

    from tests.categories.test_lm_head import _result

    res, refs = _result(torch.bfloat16, "vllm.v1.engine.llm_engine.LLMEngine")
    out = {"head_dtype": lm_head.judge(res, refs)[0]}
    for name, value in (("engine_neginf", -np.inf), ("absurd_logprob", -1e4)):
        res, refs = _result(torch.float32, "vllm.v1.engine.llm_engine.LLMEngine")
        assert lm_head.judge(res, refs)[0].outcome == "pass"
        res.runs["candidate"].sequences[2].logprobs[4] = value
        out[name] = lm_head.judge(res, refs)[0]
        assert out[name].diagnosis == "vanished_tokens", out[name].message
    return out


class _Scorer:
    """The trainer for weight_update on synthetic logprobs: the old weights predict `old`, the
    new ones `old - 1`, keep vs recompute differ after the update by 0.5."""

    def __init__(self, *args):
        self.dtype = None

    def old(self, p, t, sampling):
        return np.full(len(t), -1.0)

    def new(self, p, t, sampling):
        return np.full(len(t), -2.0)

    def keep(self, p, t, k, sampling):
        return np.concatenate([np.full(k, -1.0), np.full(len(t) - k, -2.5)])

    def score(self, p, t, boundary, sampling):
        return np.full(len(t), -3.0)


def _update_result(probe, lps_before, lps_after, versions=None, **spec):
    from parity.trainer.update_spec import UpdateSpec

    sc = SimpleNamespace(
        options={"probe": probe, "update": UpdateSpec(**spec)},
        tolerances=_shipped_tolerances("weight_update"),
        sampling=SamplingSpec(),
        head_dtype="float32",
        min_tokens=DEFAULT_MIN_TOKENS,
    )
    after = [_seq(i, range(20), lps_after, weight_versions=versions) for i in range(25)]
    before = [_seq(i, range(20), lps_before) for i in range(25)]
    run = SimpleNamespace(
        sequences=after,
        effective_config={"key": {}},
        extra={"target": "t", "before": before, "update": {"version_before": 0, "version": 1}},
    )
    return SimpleNamespace(scenario=sc, runs={"candidate": run}, model_path="m")


def _failing_weight_update(monkeypatch):
    from parity.trainer import hybrids

    monkeypatch.setattr(weight_update, "SplitScorer", _Scorer)
    # The hybrid search on real models is tested in tests/test_hybrids.py; here it finds the head.
    monkeypatch.setattr(hybrids, "explain", lambda *a: hybrids.Attribution(["lm_head"], 0.01, True))
    judge = weight_update.judge
    old, new = np.full(20, -1.0), np.full(20, -2.0)
    out = {
        "abs_dlogp_before_vs_old": judge(_update_result("takes_effect", new, new), None)[0],
        "abs_dlogp_after_vs_new": judge(_update_result("takes_effect", old, old), None)[0],
        # between old and new: a partial update, whose stale part the search names
        "stale_components": judge(_update_result("takes_effect", old, np.full(20, -1.5)), None)[0],
    }
    assert out["stale_components"].diagnosis == "stale_lm_head"
    # In flight, 5 tokens before the update; keep predicts -2.5 after it, recompute -2.0.
    v = [0] * 5 + [1] * 15
    keep = np.concatenate([np.full(5, -1.0), np.full(15, -2.5)])
    rec = np.concatenate([np.full(5, -1.0), np.full(15, -2.0)])
    out["abs_dlogp_pre_vs_old"] = judge(_update_result("inflight", old, new, v), None)[0]
    out["abs_dlogp_post_vs_keep"] = judge(_update_result("inflight", old, rec, v), None)[0]
    out["abs_dlogp_post_vs_recompute"] = judge(
        _update_result("inflight", old, keep, v, expect_semantics="recompute"), None
    )[0]
    out["post_update_tokens"] = judge(_update_result("inflight", old, rec, v, mode="wait"), None)[0]
    # Labels that put the update 3 tokens early: the trainer's split one token later fits
    # better than the labelled one.
    early = [0] * 2 + [1] * 18
    out["version_labels"] = judge(_update_result("inflight", old, keep, early), None)[0]
    # The uninterrupted run has token 3 where the paused one skips it: a token lost at the pause.
    lost = _update_result("inflight", old, keep, v)
    lost.runs["candidate"].sequences = [
        _seq(i, [0, 1, 2, 4, 5] + list(range(6, 21)), keep, weight_versions=v) for i in range(25)
    ]
    lost.runs["candidate"].extra["uninterrupted"] = [
        _seq(i, range(12), np.full(12, -1.0)) for i in range(25)
    ]
    out["token_stream"] = judge(lost, None)[0]
    assert out["token_stream"].diagnosis == "token_stream"
    assert judge(_update_result("takes_effect", old, new), None)[0].outcome == "pass"

    # A step-sized update (old and new 0.002 apart per token, under the fp32 tolerance on
    # average) that did not land: the paired screen finds the engine on the old weights.
    class _Step(_Scorer):
        def __init__(self, *args):
            self.dtype = "float32"

        def old(self, p, t, sampling):
            return -2.0 + 0.002 * np.cos(np.arange(len(t)) + p[0])

    monkeypatch.setattr(weight_update, "SplitScorer", _Step)
    unlanded = _update_result("takes_effect", old, new)
    for s in unlanded.runs["candidate"].sequences + unlanded.runs["candidate"].extra["before"]:
        s.logprobs = list(_Step().old(s.prompt_token_ids, s.token_ids, None))
    out["stale_share"] = judge(unlanded, None)[0]
    assert out["stale_share"].diagnosis == "no_effect"
    monkeypatch.setattr(weight_update, "SplitScorer", _Scorer)
    # Samples that follow the new weights, but the worker's own check finds the head computing
    # from a stale pre-packed copy: the finding fails the run on its own.
    stale_head = _update_result("takes_effect", old, new)
    stale_head.runs["candidate"].extra["update"]["evidence"] = {
        "modules_checked": 4,
        "compute_stale": ["lm_head"],
        "param_stale": [],
    }
    out["worker_stale_modules"] = judge(stale_head, None)[0]
    assert out["worker_stale_modules"].diagnosis == "worker_stale"
    assert "lm_head" in out["worker_stale_modules"].message

    # A pushed checkpoint lacking a tensor the model has (the engine keeps its old value).
    class _Incomplete(_Scorer):
        kept_old = ["model.layers.1.mlp.down_proj.weight"]

    monkeypatch.setattr(weight_update, "SplitScorer", _Incomplete)
    out["missing_tensors"] = judge(_update_result("takes_effect", old, new), None)[0]
    assert out["missing_tensors"].diagnosis == "incomplete_checkpoint"
    monkeypatch.setattr(weight_update, "SplitScorer", _Scorer)
    clean = _update_result("takes_effect", old, new)
    clean.runs["candidate"].extra["update"]["evidence"] = {"compute_stale": [], "param_stale": []}
    assert judge(clean, None)[0].outcome == "pass"
    for name, value in (("engine_neginf", -np.inf), ("absurd_logprob", -1e4)):
        after = new.copy()
        after[4] = value
        out[name] = judge(_update_result("takes_effect", old, after), None)[0]
    out.update(_failing_nopause(monkeypatch))
    return out


class _Replay:
    """The trainer replaying the nopause probe's labels, synthetic: -1 per token of the old
    weights, -2 of the new, -1.5 of the hybrid state, -2.5 new weights over older KV."""

    def __init__(self, scorer, buckets):
        self.n = len(buckets)

    def score(self, p, t, states, sampling, cached=0):
        from parity.verdicts.mixing import kinds

        value = {"old": -1.0, "new": -2.0, "hybrid": -1.5, "new_on_old_kv": -2.5}
        return np.array([value[k] for k in kinds(states, self.n)])

    def close(self):
        pass


def _nopause_result(labels, lps, **spec):
    res = _update_result("nopause", np.full(20, -1.0), np.full(20, -1.0), **spec)
    run = res.runs["candidate"]
    run.sequences = [
        _seq(i, range(20), lp, weight_versions=v) for i, (v, lp) in enumerate(zip(labels, lps))
    ]
    run.extra["update"].update(bucket_components=[["embed_tokens"], ["norm"]], n_buckets=2)
    return res


def _failing_nopause(monkeypatch):
    """nopause: 12 requests updated in flight (two buckets, one engine step apart) and 13 late
    ones admitted after the update; the engine computed exactly what its labels say."""
    from parity.categories import _update_nopause

    monkeypatch.setattr(_update_nopause, "ScheduleScorer", _Replay)
    judge = weight_update.judge
    crossing = [0] * 5 + [1] + [2] * 14
    labels = [crossing] * 12 + [[2] * 20] * 13
    follows = [_Replay(None, [[], []]).score(None, None, v, None) for v in labels]
    out = {"mixed_weight_tokens": judge(_nopause_result(labels, follows), None)[0]}
    assert out["mixed_weight_tokens"].diagnosis == "mixed_weights"
    assert "pause generation" in out["mixed_weight_tokens"].message
    mixed = next(f for f in out["mixed_weight_tokens"].findings if f.name == "mixed_weight_tokens")
    assert mixed.value == 12 * 15
    # Allowed that many mixed tokens, the same run passes: the labels fit.
    allowed = judge(_nopause_result(labels, follows, mixed_tokens_limit=180), None)[0]
    assert allowed.outcome == "pass", allowed.message
    # The control with a pause in wait mode: requests finish under the old weights, the late
    # ones start under the new: nothing mixed.
    waited = [[0] * 20] * 12 + [[2] * 20] * 13
    clean = judge(
        _nopause_result(
            waited, [_Replay(None, [[], []]).score(None, None, v, None) for v in waited]
        ),
        None,
    )[0]
    assert clean.outcome == "pass", clean.message
    # Labels the engine's logprobs do not follow: the in-flight requests' tokens labelled past
    # the update were sampled from the old weights (the mixed count allowed, so the labels are
    # what fails).
    wrong = [np.where(np.array(v) > 0, -1.0, lp) for v, lp in zip(labels[:12], follows)]
    wrong += follows[12:]
    out["abs_dlogp_vs_labels"] = judge(
        _nopause_result(labels, wrong, mixed_tokens_limit=180), None
    )[0]
    assert out["abs_dlogp_vs_labels"].diagnosis == "wrong_version_labels"
    return out


def _declared_kind(category, finding: str) -> str | None:
    """The kind `category` declares for a finding it emits (an exact name, else the family
    "prefix*" it belongs to); None when it declares no such finding."""
    declared = category.findings
    if finding in declared:
        return declared[finding]
    family = [k for k in declared if k.endswith("*") and finding.startswith(k[:-1])]
    return declared[family[0]] if family else None


def _check_category(name: str, category, failing: dict) -> None:
    """The meta-test on one category: every declared finding has a failing input (`failing`:
    case -> verdict), and every finding any of those verdicts emits is declared, with its kind."""
    for finding, kind in category.findings.items():
        assert kind in core.KINDS, (name, finding, kind)
        if finding.endswith("*"):
            cases = {k: v for k, v in failing.items() if k.startswith(finding[:-1])}
            assert cases, (name, finding)
        else:
            assert finding in failing, f"{name}: no failing input for {finding}"
            cases = {finding: failing[finding]}
        for case, verdict in cases.items():
            hit = [f for f in verdict.findings if f.name == case]
            assert hit and hit[0].outcome == "fail", (name, case, verdict.findings)
            assert hit[0].kind == kind
            assert verdict.outcome == "fail"
    for case, verdict in failing.items():
        for f in verdict.findings:
            kind = _declared_kind(category, f.name)
            assert kind is not None, f"{name} emits {f.name!r} (input {case}), not declared"
            assert f.kind == kind, (name, f.name, f.kind, kind)


def _failing_gates(category) -> dict:
    """Each trainer-framework gate finding the category declares, failed the way the report
    layer adds it (parity.report.frameworks.attach -> apply_gates) to a verdict of the
    category's (its own findings passing): engine logprobs 0.2 below the trainer's on every token of the role judged
    (token_mult_prob_error 1.22 > 1.05, gen_kl 0.021 > 1e-3, mismatch_kl 0.021 > 0.015, verl's
    kl 0.2 outside +-0.1), the other role's (where the category
    declares the baseline's gates) equal to the trainer's."""
    trainer = [np.linspace(-3.0, -0.1, 20) for _ in range(30)]
    close = fw.with_gates(fw.compute(trainer, trainer))
    far = fw.with_gates(fw.compute(trainer, [t - 0.2 for t in trainer]))
    pair = any(name.startswith("baseline.") for name in category.findings)
    roles = (fw.CANDIDATE, "baseline") if pair else (fw.CANDIDATE,)
    out = {}
    for name in category.findings:
        if name not in _common.GATES_PAIR:
            continue
        role = name.split(".")[0] if "." in name else fw.CANDIDATE
        by_role = {r: far if r == role else close for r in roles}
        verdict = core.Verdict("pass", None, "ok", [])
        report_frameworks.apply_gates(verdict, by_role, list(fw.GATEABLE))
        assert verdict.diagnosis == fw.DIAGNOSIS, verdict.message
        out[name] = verdict
    return out


def test_every_finding_of_every_category_can_fail(monkeypatch):
    failing = {
        "logprobs": _failing_logprobs(),
        "rl": _failing_rl(),
        "runtime": _failing_runtime(),
        "lm_head": _failing_lm_head(),
        "weight_update": _failing_weight_update(monkeypatch),
    }
    for name, category in categories.registry().items():
        failing[name].update(_failing_gates(category))
    assert set(failing) == set(categories.names()), "a category without its failing inputs"
    for name, category in categories.registry().items():
        _check_category(name, category, failing[name])


def test_every_finding_the_runner_adds_is_declared_and_can_fail(monkeypatch):
    from parity.engines import identity
    from parity.run import modelcheck

    monkeypatch.setattr(modelcheck, "trainer_facts", lambda path: {"model.vocab_size": 768})
    monkeypatch.setattr(identity, "engine_facts", lambda key: dict(key))
    failing = {}
    for odd in ("candidate", "baseline"):  # the engine loading another vocabulary
        runs = {
            role: SimpleNamespace(
                effective_config={"key": {"model.vocab_size": 512 if role == odd else 768}}
            )
            for role in ("candidate", "baseline")
        }
        verdict = core.Verdict("pass", None, "ok", [])
        modelcheck.add_identity(SimpleNamespace(model_path="m", runs=runs), verdict, {})
        failing[f"identity.{odd}_vs_trainer"] = verdict
    failing["identity.baseline_vs_candidate"] = verdict
    row = {"key": "model.rope_theta", "trainer": 1e5, "v0": 1e4, "message": "drift: fix"}
    scenario = SimpleNamespace(settings=lambda: {"candidate": SimpleNamespace(env="v0")})
    drifted = SimpleNamespace(scenario=scenario, drift={"candidate": [row]})
    failing["drift.candidate.model.rope_theta"] = modelcheck.drift_verdict(drifted)
    _check_category("runner", SimpleNamespace(findings=modelcheck.FINDINGS), failing)


def test_the_meta_test_fails_a_category_that_emits_an_undeclared_finding():
    # The negative control of the meta-test: the logprobs category's failing inputs, judged
    # as a category that forgot to declare one of the findings it emits, or declares it with
    # another kind, or declares one nothing makes fail.
    failing = {**_failing_logprobs(), **_failing_gates(logprobs.CATEGORY)}
    _check_category("logprobs", logprobs.CATEGORY, failing)
    forgot = SimpleNamespace(findings={**logprobs.CATEGORY.findings})
    del forgot.findings["abs_dlogp_p99"]
    with pytest.raises(AssertionError, match="emits 'abs_dlogp_p99'.*not declared"):
        _check_category("logprobs", forgot, failing)
    wrong_kind = SimpleNamespace(
        findings={**logprobs.CATEGORY.findings, "excluded_rate": "equality"}
    )
    with pytest.raises(AssertionError):
        _check_category("logprobs", wrong_kind, failing)
    extra = SimpleNamespace(findings={**logprobs.CATEGORY.findings, "never_emitted": "bound"})
    with pytest.raises(AssertionError, match="no failing input for never_emitted"):
        _check_category("logprobs", extra, failing)
    family = SimpleNamespace(
        findings={
            "abs_dlogp_*": "bound",
            "kl_k3_seqmean": "bound",
            "excluded_rate": "bound",
            "excluded_numerics_rate": "bound",
            "offset_seqmean": "bound",
            "engine_neginf": "count_limit",
            "absurd_logprob": "count_limit",
            **_common.GATES,
        }
    )
    _check_category("logprobs", family, failing)  # a declared family covers its members


@pytest.mark.parametrize(
    "build",
    [
        lambda: core.bound("x", 2.0, 1.0),
        lambda: core.count_limit("x", 3, 2),
        lambda: core.equality("x", 1, 2),
    ],
)
def test_every_finding_kind_can_fail(build):
    assert build().outcome == "fail"


def test_unknown_is_never_equal_and_preconditions_gate_a_pass():
    assert core.equality("x", None, 1).outcome == "inconclusive"
    ok = core.bound("x", 0.5, 1.0)
    assert core.combine([ok], [core.at_least("n", 5, 10)]) == "inconclusive"
    assert core.combine([], []) == "inconclusive"
    with pytest.raises(ValueError):
        core.Finding("x", "informational", "pass", 1, None)


def test_identity_findings_fail_on_a_different_model(monkeypatch):
    from parity.engines import identity
    from parity.run import modelcheck

    trainer = {"model.rope_theta": 100000.0, "model.vocab_size": 49152}
    monkeypatch.setattr(modelcheck, "trainer_facts", lambda path: trainer)
    monkeypatch.setattr(identity, "engine_facts", lambda key: dict(key))
    run = SimpleNamespace(
        effective_config={"key": {"model.rope_theta": 10000, "model.vocab_size": 49152}}
    )
    res = SimpleNamespace(model_path="m", runs={"candidate": run})
    verdict = core.Verdict("pass", None, "ok", [core.bound("x", 0.0, 1.0)])
    modelcheck.add_identity(res, verdict, {})
    assert verdict.outcome == "fail" and verdict.diagnosis == "model_mismatch"
    assert "model.rope_theta" in verdict.message
    run.effective_config["key"]["model.rope_theta"] = 100000
    verdict = core.Verdict("pass", None, "ok", [core.bound("x", 0.0, 1.0)])
    modelcheck.add_identity(res, verdict, {})
    assert verdict.outcome == "pass"


def test_identity_keys_a_served_engine_cannot_expose_are_not_compared(monkeypatch):
    """A served engine's endpoints give no hf_config: those keys are shown unknown, named in
    the note, and do not make the verdict inconclusive; a key it could report but did not
    still does."""
    from parity.engines.openai_config import NOT_EXPOSED
    from parity.run import modelcheck

    trainer = {k: 1 for k in NOT_EXPOSED} | {"model.dtype": "bfloat16"}
    monkeypatch.setattr(modelcheck, "trainer_facts", lambda path: trainer)
    served = SimpleNamespace(
        effective_config={"key": {"dtype": "bfloat16"}, "not_exposed": list(NOT_EXPOSED)}
    )
    res = SimpleNamespace(model_path="m", runs={"candidate": served})
    verdict = core.Verdict("pass", None, "ok", [core.bound("x", 0.0, 1.0)])
    detail = {}
    modelcheck.add_identity(res, verdict, detail)
    assert verdict.outcome == "pass"
    assert [f.name for f in verdict.findings] == ["x"]  # nothing comparable vs the trainer
    assert {r["status"] for r in detail["identity"]["identity.candidate_vs_trainer"]} == {"unknown"}
    # Two served engines: their dtypes are compared, a difference fails as for any engine.
    other = SimpleNamespace(
        effective_config={"key": {"dtype": "float32"}, "not_exposed": list(NOT_EXPOSED)}
    )
    res = SimpleNamespace(model_path="m", runs={"candidate": served, "baseline": other})
    verdict = core.Verdict("pass", None, "ok", [core.bound("x", 0.0, 1.0)])
    modelcheck.add_identity(res, verdict, {})
    pair = next(f for f in verdict.findings if f.name == "identity.baseline_vs_candidate")
    assert pair.outcome == "fail" and "not exposed by a served engine" in pair.note
    # An in-process engine that does not report a key it should: inconclusive, as before.
    res = SimpleNamespace(
        model_path="m",
        runs={"candidate": SimpleNamespace(effective_config={"key": {"dtype": "bfloat16"}})},
    )
    verdict = core.Verdict("pass", None, "ok", [core.bound("x", 0.0, 1.0)])
    modelcheck.add_identity(res, verdict, {})
    assert verdict.outcome == "inconclusive"


def test_engine_minus_inf_and_fill_values_fail_the_logprobs_category():
    # 20% of engine logprobs at -inf used to pass (dropped from every mean).
    seqs, scores = fake(30, 40, 0.0, seed=5)
    for s in seqs:
        s.logprobs[::5] = [-np.inf] * len(s.logprobs[::5])
    verdict, _ = logprobs.check(seqs, scores, logprobs.Logprobs.tolerances, ClipRange(), 100)
    found = {f.name: f for f in verdict.findings}
    assert verdict.outcome == "fail" and found["engine_neginf"].value == 30 * 8
    assert {f.outcome for n, f in found.items() if n != "engine_neginf"} == {"pass"}
    seqs, scores = fake(30, 40, 0.0, seed=5)
    scores[0].processed_logprob[[1, 2]] = np.finfo(np.float32).min
    verdict, detail = logprobs.check(seqs, scores, logprobs.Logprobs.tolerances, ClipRange(), 100)
    found = {f.name: f for f in verdict.findings}
    assert verdict.outcome == "fail" and found["absurd_logprob"].value == 2
    assert "2 trainer (lowest -3.40282e+38)" in found["absurd_logprob"].note
    assert detail["vs_processed"]["n_masked_tokens"] == 2


def test_report_accepts_a_failure_only_within_its_outer_bounds():
    def verdict(value, *extra):
        findings = [core.bound("abs_dlogp_seqmean", value, 0.02), *extra]
        return core.Verdict(core.combine(findings), None, "", findings)

    within = {"abs_dlogp_seqmean": 0.06}
    assert core.expected(verdict(0.01), "report", None, within)  # a pass
    assert core.expected(verdict(0.027), "report", None, within)  # the hardware's
    assert not core.expected(verdict(0.2), "report", None, within)  # a batching bug
    assert not core.expected(verdict(0.027), "report", None)  # no outer bound given
    neginf = core.count_limit("engine_neginf", 1, 0)
    assert not core.expected(verdict(0.027, neginf), "report", None, within)
    assert not core.expected(core.Verdict("inconclusive", None, ""), "report", None, within)
