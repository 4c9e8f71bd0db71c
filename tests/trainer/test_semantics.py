"""The tempered logprob and the log kept mass of the reference (score_rows) against a brute-force
computation, and the trainer's view of a score under each semantics."""

import numpy as np
import pytest

from parity.engines.base import SamplingSpec
from parity.trainer import semantics
from parity.trainer.chunked import score_rows
from parity.trainer.reference import RefScore, ScoreCache

torch = pytest.importorskip("torch")


def _brute(logits: np.ndarray, target: int, s: SamplingSpec):
    """(tempered logprob, log kept mass, processed logprob) of one row by enumeration: sort the
    tempered probabilities, keep the top k, then the fewest top tokens whose renormalised mass
    reaches top_p."""
    x = logits.astype(np.float64) / s.temperature
    p = np.exp(x - x.max())
    p /= p.sum()
    order = np.argsort(-x, kind="stable")
    keep = order[: s.top_k] if s.top_k > 0 else order
    q = p[keep] / p[keep].sum()
    if s.top_p < 1:
        n = int(np.searchsorted(np.cumsum(q), s.top_p) + 1)
        keep = keep[:n]
    kept = p[keep].sum()
    tempered = float(np.log(p[target]))
    processed = tempered - np.log(kept) if target in keep else -np.inf
    return tempered, float(np.log(kept)), processed


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingSpec(temperature=0.7, top_p=0.9, top_k=50),
        SamplingSpec(temperature=1.3, top_p=0.5, top_k=0),
        SamplingSpec(temperature=0.7, top_p=1.0, top_k=5),
        SamplingSpec(temperature=1.0, top_p=1.0, top_k=0),
        SamplingSpec(temperature=0.7, top_p=1.0, top_k=0),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tempered_and_kept_mass_match_brute_force(sampling, seed):
    rng = np.random.default_rng(seed)
    logits = torch.tensor(rng.normal(0, 3, (40, 300)), dtype=torch.float32)
    # Targets: the top token, and tokens anywhere in the vocabulary (some cut).
    targets = torch.tensor(
        [int(logits[i].argmax()) if i % 2 else int(rng.integers(300)) for i in range(40)]
    )
    rows = score_rows(lambda h: h, logits, targets, sampling)
    for i in range(40):
        tempered, log_kept, processed = _brute(
            logits[i].double().numpy(), int(targets[i]), sampling
        )
        assert rows.tempered[i] == pytest.approx(tempered, abs=2e-5)
        assert rows.log_kept_mass[i] == pytest.approx(log_kept, abs=2e-5)
        if np.isfinite(processed):
            assert rows.processed[i] == pytest.approx(processed, abs=2e-5)
            # processed = tempered - log kept mass, on the reference's own numbers
            got = rows.tempered[i] - rows.log_kept_mass[i]
            assert rows.processed[i] == pytest.approx(got, abs=2e-5)
        else:
            assert rows.processed[i] == -np.inf
    if not sampling.is_processed_distinct or (sampling.top_p == 1 and sampling.top_k == 0):
        assert np.all(rows.log_kept_mass == 0.0)  # nothing cut: exactly zero
    else:
        assert np.all(rows.log_kept_mass <= 0) and np.any(rows.log_kept_mass < 0)


def test_greedy_is_untempered_with_nothing_cut():
    logits = torch.tensor(np.random.default_rng(3).normal(0, 2, (8, 50)), dtype=torch.float32)
    targets = torch.zeros(8, dtype=torch.long)
    rows = score_rows(lambda h: h, logits, targets, SamplingSpec(temperature=0.0, top_k=5))
    assert np.allclose(rows.tempered, rows.raw) and np.all(rows.log_kept_mass == 0)


def test_cache_round_trips_the_new_columns(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    full = RefScore(
        np.array([-1.0, -2.0]),
        np.array([-0.5, -np.inf]),
        np.array([1.0, 1.1]),
        np.array([False, True]),
        np.array([-0.9, -1.5]),
        np.array([-0.4, -0.3]),
    )
    cache.put("a", full)
    cache.put("b", RefScore(np.array([-1.0]), np.array([-0.5]), np.array([1.0])))
    got = cache.get("a")
    assert got.boundary_tie.tolist() == [False, True]
    assert np.allclose(got.tempered_logprob, [-0.9, -1.5])
    assert np.allclose(got.log_kept_mass, [-0.4, -0.3])
    bare = cache.get("b")
    assert bare.boundary_tie is None and bare.tempered_logprob is None
    assert bare.log_kept_mass is None
    cache.close()


def test_trainer_view_per_semantics():
    r = RefScore(
        np.array([-1.0]),
        np.array([-0.5]),
        np.array([1.0]),
        None,
        np.array([-0.9]),
        np.array([-0.4]),
    )
    assert semantics.trainer_view(r, "processed").processed_logprob[0] == -0.5
    assert semantics.trainer_view(r, "tempered").processed_logprob[0] == -0.9
    assert semantics.trainer_view(r, "raw").processed_logprob[0] == -1.0
    # A scores file has no tempered column: its trainer_logprob is the trainer's, kept as is.
    bare = RefScore(np.array([-1.0]), np.array([-0.5]), np.array([1.0]))
    assert semantics.trainer_view(bare, "tempered") is bare
    assert set(semantics.PRESETS.values()) <= set(semantics.SEMANTICS)
    assert semantics.DEFAULT == "tempered"
