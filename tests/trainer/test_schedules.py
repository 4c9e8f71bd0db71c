"""The trainer replaying a bucketed update (parity.trainer.schedules) on real (tiny) checkpoints:
the bucket layout, and a sequence scored under per-position weight states agrees with the
old / new / keep / hybrid scores it reduces to."""

from __future__ import annotations

import numpy as np
import pytest

from parity.engines.base import SamplingSpec
from parity.trainer import hybrids, schedules
from parity.trainer.updates import SplitScorer


@pytest.fixture(scope="module")
def scorer():
    from parity.setup.models import build_model, perturb

    base = build_model("tiny-tied", log=lambda m: None)
    target = perturb(base, seed=1, scale=1.0, log=lambda m: None)
    return SplitScorer(str(base), str(target), "float32", "float32")


def test_layout_covers_every_component_once_in_model_order():
    buckets = schedules.layout(30, 4)
    flat = [c for b in buckets for c in b]
    assert len(buckets) == 4 and flat[:2] == ["embed_tokens", "lm_head"] and flat[-1] == "norm"
    assert flat[2:-1] == [f"layers.{i}" for i in range(30)]
    assert schedules.layout(2, 8) == [
        ["embed_tokens", "lm_head"],
        ["layers.0"],
        ["layers.1"],
        ["norm"],
    ]
    assert schedules.prefixes(["embed_tokens", "lm_head", "layers.3", "norm"]) == [
        "model.embed_tokens.",
        "lm_head.",
        "model.layers.3.",
        "model.norm.",
    ]
    assert schedules.stale_at(buckets, 3) == frozenset(buckets[3])
    assert schedules.stale_at(buckets, 4) == frozenset()


def test_replay_reduces_to_old_new_keep_and_hybrid(scorer):
    rng = np.random.default_rng(0)
    prompt, tokens = list(rng.integers(3, 200, 6)), list(rng.integers(3, 200, 10))
    s, buckets = SamplingSpec(), schedules.layout(2, 4)
    replay = schedules.ScheduleScorer(scorer, buckets)
    assert np.allclose(replay.score(prompt, tokens, [0] * 10, s), scorer.old(prompt, tokens, s))
    assert np.allclose(replay.score(prompt, tokens, [4] * 10, s), scorer.new(prompt, tokens, s))
    keep = scorer.keep(prompt, tokens, 3, s)
    assert np.allclose(replay.score(prompt, tokens, [0] * 3 + [4] * 7, s), keep, atol=1e-5)
    # A constant hybrid state: the hybrid model with buckets 2-3 old, throughout.
    hybrid = hybrids.HybridModel(*scorer.pairs())
    hybrid.set(schedules.stale_at(buckets, 2))
    want = scorer.score(prompt, tokens, 0, s, new=hybrid.pair())
    assert np.allclose(replay.score(prompt, tokens, [2] * 10, s), want, atol=1e-5)
    # The states matter: a bucketed schedule is none of old, new or keep.
    mixed = replay.score(prompt, tokens, [0, 0, 1, 2, 3, 4, 4, 4, 4, 4], s)
    assert (
        np.abs(mixed - keep).mean() > 1e-3
        and np.abs(mixed - scorer.new(prompt, tokens, s)).mean() > 1e-3
    )
    replay.close()
