"""The reference at scale: chunked scoring equals the unchunked computation, a bf16 head cast
block by block equals its fp32 copy, and the device is chosen as the trainer's would be."""

import numpy as np
import pytest
import torch

from parity.engines.base import SamplingSpec
from parity.trainer.chunked import (
    LIVE_BUFFERS,
    chunk_budget,
    chunk_rows,
    processed_rows,
    resolve_device,
    score_rows,
)
from parity.trainer.heads import Head, HeadSpec, ReferenceError
from parity.trainer.reference import Reference, ScoreCache

SAMPLING = SamplingSpec(temperature=0.7, top_p=0.9, top_k=50)


def _head(dtype=torch.bfloat16, cast_block=None, vocab=1000, hidden=64, seed=0, tile=None):
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(vocab, hidden, generator=gen) * 0.2).to(dtype)
    return Head(weight, None, HeadSpec(), "float32", cast_block, tile)


def _rows(n=37, hidden=64, vocab=1000, seed=1):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=gen)
    return h, torch.randint(0, vocab, (n,), generator=gen)


@pytest.mark.parametrize(
    "sampling", [SAMPLING, SamplingSpec(temperature=1.3, top_p=0.5), SamplingSpec(temperature=0.0)]
)
@pytest.mark.parametrize("rows", [1, 5, 16])
def test_chunked_scoring_equals_unchunked(sampling, rows):
    head = _head(torch.float32, tile=4)
    h, targets = _rows()
    whole = score_rows(head, h, targets, sampling)
    chunked = score_rows(head, h, targets, sampling, rows=rows)
    for a, b in zip(whole[:3], chunked[:3]):
        finite = np.isfinite(a)
        assert (finite == np.isfinite(b)).all()
        assert np.abs(a[finite] - b[finite]).max() <= 1e-6
    assert (whole[3] == chunked[3]).all()


@pytest.mark.parametrize(
    "sampling", [SAMPLING, SamplingSpec(temperature=1.3, top_p=0.5), SamplingSpec(temperature=0.0)]
)
@pytest.mark.parametrize("rows", [None, 5])
def test_processed_rows_is_score_rows_processed_bit_for_bit(sampling, rows):
    """The weight-update trainer's shortcut (no raw, tempered, entropy, tie, cut-rank passes)."""
    head = _head(torch.float32, tile=4)
    h, targets = _rows()
    full = score_rows(head, h, targets, sampling, rows=rows).processed
    alone = processed_rows(head, h, targets, sampling, rows=rows)
    assert np.array_equal(full, alone, equal_nan=True)
    if sampling.temperature:  # not the raw logprobs (which a greedy request's are)
        assert not np.array_equal(alone, score_rows(head, h, targets, sampling, rows=rows).raw)


def test_head_cast_block_by_block_equals_the_fp32_copy():
    h, _ = _rows()
    whole = _head()(h)
    blocked = _head(cast_block=96)(h)
    tiled = _head(cast_block=96, tile=8)(h)
    assert (tiled - whole).abs().max().item() <= 1e-6
    assert blocked.dtype == torch.float32 and blocked.shape == whole.shape
    assert (blocked - whole).abs().max().item() <= 1e-6


@pytest.mark.parametrize("sampling", [SAMPLING, SamplingSpec(temperature=0.7)])
def test_reference_chunked_equals_unchunked_on_a_real_model(tiny_model, sampling):
    pairs = [
        ([1, 5, 9, 13], [20, 21, 22, 23, 24, 25]),
        ([7, 8], [30, 31, 32]),
        ([2, 3, 4, 5, 6], [40] * 9),
    ]
    whole = Reference(tiny_model, "float32", chunk_rows=10_000, device="cpu", tile_rows=2).score(
        pairs, sampling
    )
    ref = Reference(tiny_model, "float32", chunk_rows=2, device="cpu", tile_rows=2)
    chunked = ref.score(pairs, sampling)
    assert ref.stats["chunk_rows"] == 2 and ref.stats["device"] == "cpu"
    for a, b in zip(whole, chunked):
        for x, y in (
            (a.raw_logprob, b.raw_logprob),
            (a.processed_logprob, b.processed_logprob),
            (a.entropy, b.entropy),
        ):
            finite = np.isfinite(x)
            assert (finite == np.isfinite(y)).all()
            assert np.abs(x[finite] - y[finite]).max(initial=0.0) <= 1e-6
    if sampling.top_k == 0:  # no truncation: every processed logprob is compared
        assert all(np.isfinite(a.processed_logprob).all() for a in whole)


def test_chunk_size_follows_the_memory_budget():
    assert chunk_rows(128256, 512 << 20) == (512 << 20) // (128256 * 4 * LIVE_BUFFERS)
    assert chunk_rows(128256, 0) == 1
    budget = chunk_budget("cpu")
    assert 0 < budget <= 1 << 30


def test_device_auto_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ReferenceError, match="sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ReferenceError, match='use "auto"'):
        resolve_device("gpu")


def test_device_auto_is_cuda_where_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ReferenceError, match="2 CUDA device"):
        resolve_device("cuda:2")


def test_cache_keys_differ_by_device_type():
    key = ScoreCache.key
    assert key("fp", "float32", SAMPLING, [1], [2], "keep_ties", "cuda:0") == key(
        "fp", "float32", SAMPLING, [1], [2], "keep_ties", "cuda"
    )
    assert key("fp", "float32", SAMPLING, [1], [2], "keep_ties", "cuda") != key(
        "fp", "float32", SAMPLING, [1], [2], "keep_ties", "cpu"
    )


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device on this machine (torch.cuda.is_available() is False):"
    " the reference's CUDA path runs where a GPU is",
)
def test_reference_on_cuda_matches_cpu(tiny_model):
    pairs = [([1, 5, 9, 13], [20, 21, 22, 23, 24, 25]), ([7, 8], [30, 31, 32])]
    cpu = Reference(tiny_model, "float32", device="cpu").score(pairs, SAMPLING)
    ref = Reference(tiny_model, "float32", device="auto")
    gpu = ref.score(pairs, SAMPLING)
    assert ref.device == "cuda"
    for a, b in zip(cpu, gpu):
        assert np.abs(a.raw_logprob - b.raw_logprob).max() <= 1e-3


def test_chunk_budget_override(monkeypatch):
    monkeypatch.setenv("PARITY_REFERENCE_CHUNK_MB", "64")
    assert chunk_budget("cpu") == 64 << 20
