"""The reference's processed distribution must equal vLLM V1's sampler transform exactly, with
ties at the top-k and top-p cuts resolved by the platform's rule (keep_ties on CPU, exact_k as
the CUDA Triton kernel does)."""

import math

import numpy as np
import pytest
import torch

from parity.engines.base import SamplingSpec
from parity.trainer.chunked import score_rows
from parity.trainer.reference import SCORER_VERSION, Reference, RefScore, ScoreCache
from parity.trainer.sampler import _entropy, boundary_ties, process_logits, tie_rule_for


def _kp(s: SamplingSpec, n: int):
    k = torch.full((n,), s.top_k, dtype=torch.long) if s.top_k > 0 else None
    p = torch.full((n,), s.top_p, dtype=torch.float32) if s.top_p < 1 else None
    return k, p


def _vllm_processed(logits: torch.Tensor, s: SamplingSpec) -> torch.Tensor:
    """vLLM's own implementation, called directly (temperature, then its top-k/top-p op)."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    return apply_top_k_top_p_pytorch(
        logits.clone() / s.temperature, *_kp(s, len(logits)), allow_cpu_sync=True
    )


def _tied_logits(seed: int = 0) -> torch.Tensor:
    """Integer-valued logits: many exact ties, at the top-k cut in most rows. Half the rows are
    continuous (randn * 3) so the no-tie case is covered too."""
    gen = torch.Generator().manual_seed(seed)
    ints = torch.randint(-6, 7, (32, 300), generator=gen).float()
    return torch.cat([ints, torch.randn(32, 300, generator=gen) * 3])


def _tied_at_k(logits: torch.Tensor, s: SamplingSpec) -> torch.Tensor:
    """Rows with more tokens at or above the k-th largest logit than k (independent of
    boundary_ties: counted with a full sort)."""
    x = logits / s.temperature
    kth = x.sort(dim=-1, descending=True).values[:, s.top_k - 1 : s.top_k]
    return (x >= kth).sum(dim=-1) > s.top_k


SPECS = [
    SamplingSpec(temperature=0.7, top_p=0.9, top_k=50),
    SamplingSpec(temperature=0.7, top_p=1.0, top_k=5),
    SamplingSpec(temperature=1.3, top_p=0.5, top_k=0),
    SamplingSpec(temperature=0.5, top_p=0.95, top_k=3),
]


@pytest.mark.parametrize("spec", SPECS)
def test_keep_ties_matches_vllm_sampler(spec):
    logits = _tied_logits()
    if spec.top_k:
        assert _tied_at_k(logits, spec)[:32].sum() > 10  # the ties really sit at the cut
    ours = process_logits(logits, spec, "keep_ties")
    theirs = _vllm_processed(logits, spec)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    finite = torch.isfinite(ours)
    assert torch.equal(ours[finite], theirs[finite])
    if spec.top_k and spec.top_p == 1.0:  # top-k only: every tie at the cut is kept
        assert ((torch.isfinite(ours).sum(-1) > spec.top_k) == _tied_at_k(logits, spec)).all()


def test_cpu_dispatch_is_the_pytorch_path():
    """On the CPU build vLLM's dispatcher has no Triton and runs the PyTorch path: keep_ties."""
    from vllm.triton_utils import HAS_TRITON
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    assert not HAS_TRITON
    logits = _tied_logits(1)
    for spec in SPECS:
        theirs = apply_top_k_top_p(logits.clone() / spec.temperature, *_kp(spec, len(logits)))
        assert torch.equal(
            torch.isinf(process_logits(logits, spec, "keep_ties")), torch.isinf(theirs)
        )


def _exact_k_by_hand(x: np.ndarray, k: int | None, p: float | None) -> set[int]:
    """Kept ids of one row, the Triton kernel's rule written independently: order by (logit
    desc, id asc), take k, then the shortest prefix whose probability mass reaches p."""
    order = sorted(range(len(x)), key=lambda i: (-x[i], i))[: k or len(x)]
    if p is None:
        return set(order)
    w = np.exp(x[order] - x[order[0]])
    cum = np.cumsum(w / w.sum())
    return set(order[: int(np.searchsorted(cum, p - 1e-9)) + 1])


@pytest.mark.parametrize("spec", SPECS)
def test_exact_k_keeps_k_lowest_ids_among_ties(spec):
    logits = _tied_logits()
    ours = process_logits(logits, spec, "exact_k")
    kept = torch.isfinite(ours)
    if spec.top_k and spec.top_p == 1.0:
        assert (kept.sum(-1) == spec.top_k).all()
    if spec.top_k:
        assert (kept.sum(-1) <= spec.top_k).all()
    x = (logits / spec.temperature).double().numpy()
    k = spec.top_k or None
    p = spec.top_p if spec.top_p < 1 else None
    for row in range(len(x)):
        assert set(torch.nonzero(kept[row]).flatten().tolist()) == _exact_k_by_hand(x[row], k, p)
    assert torch.equal(ours[kept], (logits / spec.temperature)[kept])


def test_rules_differ_exactly_on_rows_tied_at_k():
    """Negative control: on rows tied at the k-th logit keep_ties keeps more than k and exact_k
    exactly k, so a reference with the wrong rule gives different processed logprobs there."""
    spec = SamplingSpec(temperature=1.0, top_k=5)
    logits = _tied_logits()
    keep = torch.isfinite(process_logits(logits, spec, "keep_ties")).sum(-1)
    exact = torch.isfinite(process_logits(logits, spec, "exact_k")).sum(-1)
    tied = _tied_at_k(logits, spec)
    assert tied.any() and (~tied).any()
    assert ((keep != exact) == tied).all()
    assert torch.equal(boundary_ties(logits, spec), tied)


@pytest.mark.parametrize("p, n_kept", [(0.5, 4), (0.75, 6)])
def test_top_p_cumulative_exactly_one_minus_p(p, n_kept):
    """Eight equal logits: every probability is exactly 1/8, so the ascending cumulative sum hits
    1 - p exactly; vLLM drops that token (cum <= 1 - p), keeping mass exactly p. The cut falls
    inside the tie group: exact_k keeps the lowest ids, the PyTorch path its sort order."""
    spec = SamplingSpec(temperature=1.0, top_p=p)
    logits = torch.zeros(2, 8)
    keep = process_logits(logits, spec, "keep_ties")
    assert torch.equal(torch.isinf(keep), torch.isinf(_vllm_processed(logits, spec)))
    assert (torch.isfinite(keep).sum(-1) == n_kept).all()
    exact = torch.isfinite(process_logits(logits, spec, "exact_k"))
    assert (torch.nonzero(exact[0]).flatten() == torch.arange(n_kept)).all()
    assert boundary_ties(logits, spec).all()
    lp = process_logits(logits, spec, "exact_k").log_softmax(-1)
    assert lp[0, 0].item() == pytest.approx(math.log(1 / n_kept), abs=1e-6)


def test_boundary_ties_per_token():
    # Row 0: logits 9, 8, 5, 5, 5, 1 with k = 3: the cut at the third value splits {2, 3, 4}.
    logits = torch.tensor([[9.0, 8.0, 5.0, 5.0, 5.0, 1.0], [9.0, 8.0, 5.0, 4.0, 3.0, 1.0]])
    spec = SamplingSpec(temperature=1.0, top_k=3)
    assert boundary_ties(logits, spec).tolist() == [True, False]
    assert boundary_ties(logits, spec, tokens=torch.tensor([4, 2])).tolist() == [True, False]
    assert boundary_ties(logits, spec, tokens=torch.tensor([0, 2])).tolist() == [False, False]
    assert torch.isfinite(process_logits(logits, spec, "exact_k"))[0].tolist() == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    assert not boundary_ties(logits, SamplingSpec(temperature=0.0, top_k=3)).any()  # greedy


def test_tie_rule_for_platforms():
    assert tie_rule_for("cpu", "0.32.0") == "keep_ties"
    assert tie_rule_for("cuda", "0.32.0") == "exact_k"
    assert tie_rule_for("cuda", "0.33.1+cu129") == "exact_k"
    assert tie_rule_for("cuda", "0.8.5") == "keep_ties"  # V0: sort path, ties kept
    assert tie_rule_for(None, None) == "keep_ties"
    assert tie_rule_for("tpu", "0.32.0") == "keep_ties"
    with pytest.raises(ValueError):
        process_logits(torch.zeros(1, 4), SamplingSpec(top_k=2), "random")


def test_cache_key_and_entry_carry_the_tie_rule(tmp_path):
    assert SCORER_VERSION == 9
    s = SamplingSpec(temperature=0.7, top_k=5)
    key = ScoreCache.key("fp", "float32", s, [1, 2], [3], "keep_ties")
    assert key != ScoreCache.key("fp", "float32", s, [1, 2], [3], "exact_k")
    cache = ScoreCache(tmp_path / "c.sqlite")
    cache.put(key, RefScore(np.array([-1.0]), np.array([-2.0]), np.array([0.5]), np.array([True])))
    got = cache.get(key)
    assert got.boundary_tie.tolist() == [True] and got.processed_logprob.tolist() == [-2.0]
    assert got.cut_rank is None
    cache.put(key, RefScore(*(np.array([v]) for v in (-1.0, -np.inf, 0.5, 0, -1.0, 0.0, 2, 0.25))))
    assert cache.get(key).cut_rank.tolist() == [2.0]
    assert cache.get(key).cut_distance.tolist() == [0.25]
    with pytest.raises(ValueError):
        Reference(tmp_path, tie_rule="lowest")
    cache.close()


def test_cut_rank_counts_the_cut_tokens_above_the_target():
    # probs 0.5, 0.3, 0.1, 0.06, 0.04; top_p 0.75 keeps {0.5, 0.3}: 0.1 is the first token
    # past the cut (rank 1), 0.04 the third; a kept token is rank 0.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])).repeat(3, 1)
    rows = score_rows(lambda h: h, logits, torch.tensor([1, 2, 4]), SamplingSpec(top_p=0.75))
    assert rows.cut_rank.tolist() == [0.0, 1.0, 3.0]
    no_cut = score_rows(lambda h: h, logits, torch.tensor([1, 2, 4]), SamplingSpec())
    assert no_cut.cut_rank.tolist() == [0.0, 0.0, 0.0]
    assert no_cut.cut_distance.tolist() == [0.0, 0.0, 0.0]


def test_cut_distance_is_the_logit_error_spread_that_keeps_the_token():
    # probs 0.5, 0.3, 0.1, 0.06, 0.04 at T 1. top_p 0.75: the 0.1 token has 0.8 above it, so
    # the log-odds of that mass must fall from logit(0.8) to logit(0.75); the 0.04 token from
    # logit(0.96). top_k 2: the 0.1 token must rise log(0.3 / 0.1) to tie the 2nd.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])).repeat(3, 1)
    targets = torch.tensor([1, 2, 4])
    rows = score_rows(lambda h: h, logits, targets, SamplingSpec(top_p=0.75))
    want = [0.0, math.log(4) - math.log(3), math.log(24) - math.log(3)]
    assert rows.cut_distance.tolist() == pytest.approx(want, abs=1e-6)
    rows = score_rows(lambda h: h, logits, targets, SamplingSpec(top_k=2))
    want = [0.0, math.log(3), math.log(7.5)]
    assert rows.cut_distance.tolist() == pytest.approx(want, abs=1e-6)
    # top_k 3 then top_p 0.75 over the renormalised 0.5, 0.3, 0.1: the 0.1 token has 0.8/0.9
    # above it; the 0.04 token, outside the top 3, has all of them (0.9 against its 0.04).
    rows = score_rows(lambda h: h, logits, targets, SamplingSpec(top_k=3, top_p=0.75))
    want = [0.0, math.log(8) - math.log(3), math.log(0.9 / 0.04) - math.log(3)]
    assert rows.cut_distance.tolist() == pytest.approx(want, abs=1e-6)
    # The bound is tight: an error of just that spread (raising the token and those below it)
    # keeps the 0.1 token under top_p 0.75; one of a little less does not.
    d = math.log(4) - math.log(3)
    for extra, keeps in ((1e-4, True), (-1e-4, False)):
        moved = logits[:1].clone()
        moved[0, 2:] += d + extra
        assert bool(torch.isfinite(process_logits(moved, SamplingSpec(top_p=0.75))[0, 2])) is keeps


def test_greedy_is_not_tempered():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.equal(process_logits(logits, SamplingSpec(temperature=0.0)), logits)


def test_top_p_hand_computed():
    # probs 0.5, 0.3, 0.2 (as logits log p); top_p = 0.6 keeps {0.5, 0.3}: the ascending cumsum
    # is 0.2, 0.5, 1.0 and entries with cumsum <= 0.4 are dropped, i.e. only the 0.2 token.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    for rule in ("keep_ties", "exact_k"):
        lp = process_logits(logits, SamplingSpec(temperature=1.0, top_p=0.6), rule).log_softmax(-1)
        assert math.isinf(lp[0, 2].item())
        assert lp[0, 0].item() == pytest.approx(math.log(0.5 / 0.8), abs=1e-6)
        assert lp[0, 1].item() == pytest.approx(math.log(0.3 / 0.8), abs=1e-6)


def test_entropy_hand_computed():
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.0]]))
    assert _entropy(lp).item() == pytest.approx(math.log(2), abs=1e-6)
