"""The hybrid-hypothesis search on real (tiny) checkpoints: an "engine" whose logprobs come from
the new weights with one component left old is attributed to exactly that component."""

from __future__ import annotations

import numpy as np
import pytest

from parity.engines.base import SamplingSpec
from parity.trainer import hybrids
from parity.trainer.updates import SplitScorer


@pytest.fixture(scope="module")
def scorer():
    from parity.setup.models import build_model, perturb

    base = build_model("tiny-tied", log=lambda m: None)
    target = perturb(base, seed=1, scale=1.0, log=lambda m: None)
    return SplitScorer(str(base), str(target), "float32", "float32")


def _sequences(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [(list(rng.integers(3, 200, 6)), list(rng.integers(3, 200, 12))) for _ in range(n)]


def _engine(scorer, seqs, stale):
    """Logprobs of an engine computing with the new weights except `stale` (kept old)."""
    old_pair, new_pair = scorer.pairs()
    hybrid = hybrids.HybridModel(old_pair, new_pair)
    hybrid.set(frozenset(stale))
    return [scorer.score(p, t, 0, SamplingSpec(), new=hybrid.pair()) for p, t in seqs]


@pytest.mark.parametrize(
    "stale,diagnosis",
    [
        (["lm_head"], "stale_lm_head"),
        (["layers.1"], "stale_layers"),
        (["embed_tokens"], "stale_components"),
        ([], None),
    ],
)
def test_search_names_the_stale_component(scorer, stale, diagnosis):
    seqs = _sequences()
    engine = _engine(scorer, seqs, stale)
    att = hybrids.explain(
        scorer, lambda pair, i: scorer.score(*seqs[i], 0, SamplingSpec(), new=pair), engine, 0.05
    )
    assert att.stale == stale and att.fitted and att.gap < 1e-4, att
    assert att.diagnosis() == diagnosis
    assert (
        att.hypotheses["new weights"] > 0.05 or not stale
    )  # the plain new weights do not explain it


def test_unexplained_engine_is_not_attributed(scorer):
    seqs = _sequences()
    rng = np.random.default_rng(1)
    engine = [np.log(rng.uniform(0.01, 1.0, len(t))) for _, t in seqs]  # no model at all
    att = hybrids.explain(
        scorer, lambda pair, i: scorer.score(*seqs[i], 0, SamplingSpec(), new=pair), engine, 0.05
    )
    assert not att.fitted and att.diagnosis() is None
    assert "not attributed" in hybrids.message(att, 0.05)


def test_hybrid_is_restored(scorer):
    """After a search the hybrid body is the new body again (no leak into later scoring)."""
    seqs = _sequences(2)
    new = [scorer.new(p, t, SamplingSpec()) for p, t in seqs]
    hybrids.explain(
        scorer,
        lambda pair, i: scorer.score(*seqs[i], 0, SamplingSpec(), new=pair),
        _engine(scorer, seqs, ["layers.0"]),
        0.05,
    )
    assert all(np.allclose(a, scorer.new(p, t, SamplingSpec())) for a, (p, t) in zip(new, seqs))


def test_singles_replay_equals_computing_each_hybrid(scorer):
    """hybrids.singles replays the components before the stale one from the all-new recording;
    each prediction equals scoring that hybrid from scratch, and the hybrid is new again after."""
    seqs = _sequences(3)
    old_pair, new_pair = scorer.pairs()
    hybrid = hybrids.HybridModel(old_pair, new_pair)
    got = hybrids.singles(
        hybrid,
        lambda pair, idx: scorer.new_many([seqs[i] for i in idx], SamplingSpec(), new=pair),
        len(seqs),
    )
    assert list(got) == hybrid.components() == hybrids.HybridModel.names(new_pair)
    for name in ("embed_tokens", "layers.1", "lm_head"):
        want = _engine(scorer, seqs, [name])
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(got[name], want)), name
    assert hybrid.stale == frozenset()
