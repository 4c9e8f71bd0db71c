"""The reference's processed distribution must equal vLLM V1's sampler transform exactly."""

import math

import numpy as np
import pytest
import torch

from parity.engines.base import SamplingSpec
from parity.reference import _entropy, process_logits


def _vllm_processed(logits: torch.Tensor, s: SamplingSpec) -> torch.Tensor:
    """vLLM's own implementation, called directly (temperature, then its top-k/top-p op)."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    x = logits.clone() / s.temperature
    n = x.shape[0]
    k = torch.full((n,), s.top_k, dtype=torch.long) if s.top_k > 0 else None
    p = torch.full((n,), s.top_p, dtype=torch.float32) if s.top_p < 1 else None
    return apply_top_k_top_p_pytorch(x, k, p, allow_cpu_sync=True)


@pytest.mark.parametrize("spec", [
    SamplingSpec(temperature=0.7, top_p=0.9, top_k=50),
    SamplingSpec(temperature=0.7, top_p=1.0, top_k=5),
    SamplingSpec(temperature=1.3, top_p=0.5, top_k=0),
    SamplingSpec(temperature=0.5, top_p=0.95, top_k=3),
])
def test_processed_logits_match_vllm_sampler(spec):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 300, generator=gen) * 3
    logits[0, :10] = 5.0  # ties at the top-k boundary are kept by both
    ours = process_logits(logits, spec)
    theirs = _vllm_processed(logits, spec)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    finite = torch.isfinite(ours)
    assert torch.allclose(ours[finite], theirs[finite], atol=1e-6)


def test_greedy_is_not_tempered():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.equal(process_logits(logits, SamplingSpec(temperature=0.0)), logits)


def test_top_p_hand_computed():
    # probs 0.5, 0.3, 0.2 (as logits log p); top_p = 0.6 keeps {0.5, 0.3}: the ascending cumsum
    # is 0.2, 0.5, 1.0 and entries with cumsum <= 0.4 are dropped, i.e. only the 0.2 token.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    lp = process_logits(logits, SamplingSpec(temperature=1.0, top_p=0.6)).log_softmax(-1)
    assert math.isinf(lp[0, 2].item())
    assert lp[0, 0].item() == pytest.approx(math.log(0.5 / 0.8), abs=1e-6)
    assert lp[0, 1].item() == pytest.approx(math.log(0.3 / 0.8), abs=1e-6)


def test_entropy_hand_computed():
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.0]]))
    assert _entropy(lp).item() == pytest.approx(math.log(2), abs=1e-6)
