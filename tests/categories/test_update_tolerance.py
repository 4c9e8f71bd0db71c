"""weight_update's tolerance per dtype (parity.trainer.update_spec.tolerance): an fp32 run is judged
at the fp32 tolerance, so an update the size of one RL step (~1e-2) that did not land fails,
where the bf16 tolerance could not tell it from a landed one."""

from types import SimpleNamespace

import numpy as np

from parity.categories import weight_update
from parity.engines.base import SamplingSpec, Sequence
from parity.run.scenario_fields import DEFAULT_MIN_TOKENS
from parity.trainer.update_spec import DEFAULT_TOLERANCE, FP32_TOLERANCE, UpdateSpec, tolerance

STEP = 0.015  # old -> new of an RL step, per token


def test_tolerance_by_dtype():
    shipped = dict(weight_update.CATEGORY.tolerances)
    assert tolerance(shipped, "float32") == FP32_TOLERANCE
    assert tolerance(shipped, "bfloat16") == DEFAULT_TOLERANCE
    assert tolerance(shipped, None) == DEFAULT_TOLERANCE  # unknown: the looser one
    assert tolerance({**shipped, "abs_dlogp_mean_fp32": 0.01}, "float32") == 0.01
    assert FP32_TOLERANCE < DEFAULT_TOLERANCE


class _StepScorer:
    """Old weights predict -1, the new ones -1 - STEP on every token (a step-sized update)."""

    def __init__(self, old_path, new_path, head_dtype, dtype):
        self.dtype = dtype

    def old(self, p, t, sampling):
        return np.full(len(t), -1.0)

    def new(self, p, t, sampling):
        return np.full(len(t), -1.0 - STEP)

    def score(self, p, t, boundary, sampling, new=None):
        return self.new(p, t, sampling)


def _result(after: float, dtype: str):
    sc = SimpleNamespace(
        options={"probe": "takes_effect", "update": UpdateSpec(train_steps=2)},
        tolerances=dict(weight_update.CATEGORY.tolerances),
        sampling=SamplingSpec(),
        head_dtype="float32",
        min_tokens=DEFAULT_MIN_TOKENS,
    )
    rng = np.random.default_rng(0)

    def seqs(value):  # fp32-sized noise on every token
        return [
            Sequence(i, 0, [1], list(range(20)), list(value + rng.normal(0, 1e-3, 20)))
            for i in range(25)
        ]

    run = SimpleNamespace(
        sequences=seqs(after),
        effective_config={"key": {"dtype": f"torch.{dtype}"}},
        extra={"target": "t", "before": seqs(-1.0), "update": {"version_before": 0, "version": 1}},
    )
    return SimpleNamespace(scenario=sc, runs={"candidate": run}, model_path="m")


def test_an_rl_step_that_did_not_land_fails_in_fp32(monkeypatch):
    monkeypatch.setattr(weight_update, "SplitScorer", _StepScorer)
    landed, verdict_detail = weight_update.judge(_result(-1.0 - STEP, "float32"), None)
    assert landed.outcome == "pass", landed.message
    assert verdict_detail["tolerance"] == FP32_TOLERANCE
    stale, _ = weight_update.judge(_result(-1.0, "float32"), None)
    assert stale.outcome == "fail" and stale.diagnosis == "no_effect", stale.message
    # The same runs at the bf16 tolerance: the step is within it, nothing can be decided.
    assert weight_update.judge(_result(-1.0, "bfloat16"), None)[0].outcome != "fail"


def test_a_step_closer_than_three_tolerances_is_decided_by_the_paired_share(monkeypatch):
    """A step of 0.003 per token (old and new less than 3 fp32 tolerances apart, so the mean
    rule cannot separate them) with fp32-sized noise: the paired share of the old weights is
    resolved, so a landed update passes and one that did not land fails `stale_share`; in
    bf16 the same runs stay inconclusive (the rule needs an fp32 trainer)."""
    monkeypatch.setitem(globals(), "STEP", 0.003)
    monkeypatch.setattr(weight_update, "SplitScorer", _StepScorer)
    landed, detail = weight_update.judge(_result(-1.003, "float32"), None)
    assert landed.outcome == "pass", landed.message
    sep = next(p for p in landed.preconditions if p.name == "old_new_separation")
    assert sep.met and "paired share resolved" in sep.note
    stale, _ = weight_update.judge(_result(-1.0, "float32"), None)
    assert stale.outcome == "fail" and stale.diagnosis == "no_effect", stale.message
    assert next(f for f in stale.findings if f.name == "stale_share").outcome == "fail"
    bf16, _ = weight_update.judge(_result(-1.0, "bfloat16"), None)
    assert bf16.outcome == "inconclusive" and "below bf16 noise" in bf16.message
