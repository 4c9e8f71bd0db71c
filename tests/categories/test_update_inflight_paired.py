"""The in-flight probe's keep-vs-recompute separation at RL-step size: closer than SEPARATION
tolerances, the paired share decides with an fp32 trainer (SmolLM2, lr 1e-5: keep and recompute
0.012 apart against 0.012 needed; docs/measurements.md#inflight-step-size); a bf16 trainer stays
indistinguishable."""

from types import SimpleNamespace

import numpy as np
import pytest

from parity.categories._update_inflight import _Inflight, _judge_post

TOL = 0.004


def _run(follow: str, seed: int = 0) -> _Inflight:
    """24 sequences of 24 tokens after the update; keep and recompute 0.008 apart on average
    (under 3 tolerances), the engine following `follow` with fp32-like noise (5e-6)."""
    rng = np.random.default_rng(seed)
    run = _Inflight(seqs=[], ks=[], pairs=[], monotone=True, batch=None, sampling=None)
    for _ in range(24):
        keep = rng.normal(-2.0, 0.5, 24)
        rec = keep + rng.normal(0.0, 0.01, 24)
        eng = (keep if follow == "keep" else rec) + rng.normal(0.0, 5e-6, 24)
        run.post_eng.append(eng)
        run.post_keep.append(keep)
        run.post_rec.append(rec)
        run.post_old.append(keep - 0.02)
    return run


@pytest.mark.parametrize("follow", ["keep", "recompute"])
def test_paired_share_separates_keep_from_recompute_with_an_fp32_trainer(follow):
    spec = SimpleNamespace(expect_semantics="keep", mode="keep")
    findings, pre = [], []
    semantics = _judge_post(spec, _run(follow), TOL, findings, pre, exact=True)
    (apart,) = [p for p in pre if p.name == "keep_recompute_separation"]
    assert apart.met and "paired share resolved" in apart.note
    assert semantics == follow
    (post,) = [f for f in findings if f.name == "abs_dlogp_post_vs_keep"]
    assert (post.outcome == "pass") == (follow == "keep")  # recompute fails the keep finding


def test_without_an_fp32_trainer_too_close_is_indistinguishable():
    spec = SimpleNamespace(expect_semantics="keep", mode="keep")
    findings, pre = [], []
    semantics = _judge_post(spec, _run("keep"), TOL, findings, pre, exact=False)
    (apart,) = [p for p in pre if p.name == "keep_recompute_separation"]
    assert not apart.met and semantics == "indistinguishable"
