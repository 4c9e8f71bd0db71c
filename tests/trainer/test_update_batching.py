"""SplitScorer's batched scoring (parity.trainer.split_batches) against its one-sequence path: old, new,
keep at several k, stale-cache boundaries, recompute and a hybrid pair, over sequences of
different lengths, empty completions and batches split into several chunks."""

import numpy as np
import pytest
import torch

from parity.engines.base import SamplingSpec
from parity.trainer import hybrids, split_batches
from parity.trainer.updates import SplitScorer, cached_boundary, keep_boundary

T1 = SamplingSpec(temperature=1.0)
TOPK = SamplingSpec(temperature=0.8, top_k=400, top_p=0.995)


@pytest.fixture(scope="module")
def scorer(tiny_model, perturbed):
    return SplitScorer(tiny_model, perturbed, head_dtype="model", dtype="float32")


def _pairs(n=9, seed=0, shared=True):
    """Prompts of 1-14 tokens and completions of 0-17 (one empty, one single token); `shared`:
    most prompts start with the same 6 tokens (a chat template), and two prompts have three
    completions each (samples, or the sequences before and after an update), one of them a
    prompt of one token."""
    rng = np.random.default_rng(seed)
    out = [
        (
            list(rng.integers(3, 200, rng.integers(1, 15))),
            list(rng.integers(3, 200, rng.integers(2, 18))),
        )
        for _ in range(n)
    ]
    out[1] = (out[1][0], [])
    out[2] = (out[2][0], out[2][1][:1])
    if shared:
        template = [1, 7, 8, 9, 10, 11]
        out = [(template + p, t) for p, t in out[:-2]] + out[-2:]
        for prompt in (out[3][0], [42]):
            out += [(prompt, list(rng.integers(3, 200, rng.integers(1, 12)))) for _ in range(3)]
    return out


def _max_diff(many, one) -> float:
    """Max |difference| of the finite entries; the tokens a top-k/top-p cut excludes (-inf)
    must be the same ones."""
    assert [len(a) for a in many] == [len(b) for b in one]
    a, b = np.concatenate([np.zeros(0), *many]), np.concatenate([np.zeros(0), *one])
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    ok = np.isfinite(a)
    return float(np.abs(a[ok] - b[ok]).max()) if ok.any() else 0.0


def _every_boundary(pairs):
    """Each sequence at every boundary: all new, inside the prompt, at the keep boundaries of
    several k, the stale-cache cut of a 4-token block, the last positions, past the end."""
    items = []
    for p, t in pairs:
        n = len(p) + len(t)
        bounds = {0, 1, len(p) - 1, cached_boundary(len(p), 4), n - 2, n - 1, n, n + 3}
        bounds |= {keep_boundary(len(p), k) for k in (0, 1, 2, len(t) // 2, len(t))}
        items += [(p, t, b) for b in sorted(b for b in bounds if b >= 0)]
    return items


@pytest.mark.parametrize(
    "sampling,shared",
    [(T1, True), (TOPK, True), (T1, False)],
    ids=["t1", "topk-topp", "nothing-shared"],
)
def test_batched_equals_one_sequence_at_every_boundary(scorer, sampling, shared):
    items = _every_boundary(_pairs(shared=shared))
    many = scorer.score_many(items, sampling)
    one = [scorer.score(p, t, b, sampling) for p, t, b in items]
    assert _max_diff(many, one) <= 1e-5
    finite = np.isfinite(np.concatenate(many)).mean()
    assert finite > 0.1 and (sampling is T1 or finite < 1)  # the cut is exercised both ways


def test_old_new_keep_and_recompute_batched(scorer):
    pairs = [pt for pt in _pairs(seed=1) if pt[1]]
    assert _max_diff(scorer.old_many(pairs, T1), [scorer.old(p, t, T1) for p, t in pairs]) <= 1e-5
    news = scorer.new_many(pairs, T1)
    assert _max_diff(news, [scorer.new(p, t, T1) for p, t in pairs]) <= 1e-5
    olds = scorer.old_many(pairs, T1)
    for k in (0, 1, 3, 7):
        ks = [min(k, len(t)) for _, t in pairs]
        assert (
            _max_diff(
                scorer.keep_many(pairs, ks, T1),
                [scorer.keep(p, t, kk, T1) for (p, t), kk in zip(pairs, ks)],
            )
            <= 1e-5
        )
        # recompute as the in-flight judging builds it: old before k, new from k on
        rec = [np.concatenate([o[:kk], n[kk:]]) for o, n, kk in zip(olds, news, ks)]
        assert (
            _max_diff(rec, [scorer.recompute(p, t, kk, T1) for (p, t), kk in zip(pairs, ks)])
            <= 1e-5
        )


def test_a_batch_larger_than_one_chunk(scorer, monkeypatch):
    """Chunks of at most 24 padded positions: many forwards, every path; same scores."""
    items = _every_boundary(_pairs(12, seed=2))
    whole = scorer.score_many(items, T1)
    calls = []
    forward = split_batches._segments
    monkeypatch.setattr(split_batches, "_segments", lambda *a: calls.append(1) or forward(*a))
    old, new = scorer.pairs()
    with torch.inference_mode():
        small = split_batches.score_items(old, new, items, T1, max_tokens=24)
    assert len(calls) > 4
    assert _max_diff(small, whole) <= 1e-5
    assert _max_diff(small, [scorer.score(p, t, b, T1) for p, t, b in items]) <= 1e-5


def test_equal_items_and_empty_completions(scorer):
    p, t = [5, 6, 7], [8, 9, 10, 11]
    out = scorer.score_many([(p, t, 4), ([1, 2], [], 0), (p, t, 4), (p, t, 0)], T1)
    assert [len(x) for x in out] == [4, 0, 4, 4]
    assert np.array_equal(out[0], out[2]) and out[0] is not out[2]
    assert scorer.score_many([], T1) == []


def test_hybrid_pair_batched(scorer):
    """A hybrid hypothesis (old layer 0 and head in the new body) as the new weights."""
    old_pair, new_pair = scorer.pairs()
    hybrid = hybrids.HybridModel(old_pair, new_pair)
    hybrid.set(frozenset({"layers.0", hybrids.HEAD}))
    pair = hybrid.pair()
    pairs = [pt for pt in _pairs(seed=3) if pt[1]]
    ks = [min(3, len(t)) for _, t in pairs]
    many = scorer.new_many(pairs, T1, new=pair) + scorer.keep_many(pairs, ks, T1, new=pair)
    one = [scorer.score(p, t, 0, T1, new=pair) for p, t in pairs] + [
        scorer.score(p, t, keep_boundary(len(p), k), T1, new=pair) for (p, t), k in zip(pairs, ks)
    ]
    assert _max_diff(many, one) <= 1e-5
    # and it is another model than the new weights (the check can fail)
    assert _max_diff(many[: len(pairs)], scorer.new_many(pairs, T1)) > 1e-2


def test_a_wrong_boundary_is_caught(scorer):
    """The negative control: batched keep at k differs from the one-sequence keep at k + 1."""
    pairs = [pt for pt in _pairs(seed=4) if len(pt[1]) > 4]
    many = scorer.keep_many(pairs, [2] * len(pairs), T1)
    assert _max_diff(many, [scorer.keep(p, t, 3, T1) for p, t in pairs]) > 1e-2


def test_bfloat16_batched_within_its_rounding(tiny_model, perturbed):
    """In bf16 a batched forward rounds differently from a single one (other GEMM shapes, the
    padding mask), as any two bf16 runs do: measured here, max ~0.03-0.05 and mean ~0.004 per
    token, less than half of what bf16 rounding itself moves these logprobs (the one-sequence
    bf16 path vs fp32: mean ~0.011, max ~0.05), and far below the category's tolerance on
    mean |dlogp| (0.05). So: mean within half the bf16-vs-fp32 mean, max within 0.1."""
    bf = SplitScorer(tiny_model, perturbed, head_dtype="float32", dtype="bfloat16")
    fp = SplitScorer(tiny_model, perturbed, head_dtype="float32", dtype="float32")
    items = _every_boundary(_pairs(seed=5))
    many = bf.score_many(items, T1)
    one = [bf.score(p, t, b, T1) for p, t, b in items]
    ref = [fp.score(p, t, b, T1) for p, t, b in items]
    diffs = np.concatenate([np.abs(a - b) for a, b in zip(many, one) if len(a)])
    rounding = np.concatenate([np.abs(a - b) for a, b in zip(one, ref) if len(a)])
    assert diffs.max() <= 0.1 and diffs.mean() <= 0.5 * rounding.mean(), (
        diffs.max(),
        diffs.mean(),
        rounding.mean(),
    )


def _predict(scorer, pairs, ks, pair, idx):
    """Keep semantics after k tokens (k = 0: the new weights throughout) with `pair` as the
    new weights, from token k on."""
    sub, kk = [pairs[i] for i in idx], [ks[i] for i in idx]
    return [x[k:] for x, k in zip(scorer.keep_many(sub, kk, T1, new=pair), kk)]


@pytest.mark.parametrize(
    "stale,k", [(["layers.1"], 2), ([hybrids.HEAD], 2), (["layers.1"], 0), (["embed_tokens"], 0)]
)
def test_batched_search_with_replay_equals_the_plain_search(scorer, monkeypatch, stale, k):
    """The search with a batched Predictor (keep semantics as the in-flight probe predicts,
    or the new weights throughout as the between-calls probes do: the shared prompt template
    then runs through the hybrid body too) and the shared components replayed names the
    component, with the same gaps as one sequence at a time recomputing everything, in fewer
    layer forwards."""
    pairs = [pt for pt in _pairs(10, seed=6) if len(pt[1]) > 3]
    ks = [k] * len(pairs)
    old_pair, new_pair = scorer.pairs()
    hybrid = hybrids.HybridModel(old_pair, new_pair)
    hybrid.set(frozenset(stale))
    engine = _predict(scorer, pairs, ks, hybrid.pair(), range(len(pairs)))
    predict = hybrids.Predictor(lambda pair, idx: _predict(scorer, pairs, ks, pair, idx))
    calls = []
    layer_call = type(scorer.pairs()[1][0].base_model.layers[0]).__call__
    monkeypatch.setattr(
        type(scorer.pairs()[1][0].base_model.layers[0]),
        "__call__",
        lambda self, *a, **k: calls.append(1) or layer_call(self, *a, **k),
    )
    fast = hybrids.explain(scorer, predict, engine, 0.05)
    n_fast = len(calls)
    monkeypatch.setattr(hybrids.HybridModel, "shared", lambda self, a, b: [])
    plain = hybrids.explain(scorer, lambda pair, i: predict(pair, i), engine, 0.05)
    assert fast.stale == plain.stale == stale and fast.fitted
    assert fast.hypotheses.keys() == plain.hypotheses.keys()
    assert max(abs(fast.hypotheses[k] - plain.hypotheses[k]) for k in fast.hypotheses) <= 1e-5
    assert abs(fast.gap - plain.gap) <= 1e-5
    assert n_fast < (0.8 if stale != ["embed_tokens"] else 1) * (len(calls) - n_fast)


def test_scorer_counts_its_seconds_and_tokens(tiny_model, perturbed):
    """What the run reports as reference time for weight updates (References.add_seconds)."""
    fresh = SplitScorer(tiny_model, perturbed, head_dtype="model", dtype="float32")
    assert (fresh.seconds, fresh.tokens) == (0.0, 0)
    fresh.score_many([([1, 2, 3], [4, 5], 0), ([1, 2], [6, 7, 8], 3)], SamplingSpec())
    fresh.score([1, 2, 3], [4], 2, SamplingSpec())
    assert fresh.tokens == 6 and fresh.seconds > 0
