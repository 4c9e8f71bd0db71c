"""The sampler's transform, as vLLM applies it: temperature, then top-k, then top-p, with ties
at the cuts resolved by the platform's rule; and the exact entropy of the result."""

from __future__ import annotations

import math
import re

from parity.engines.base import SamplingSpec

GREEDY_EPS = 1e-5  # vLLM V1's _SAMPLING_EPS: below this temperature a request is greedy
TIE_RULES = ("keep_ties", "exact_k")


def _top_k_p(sampling: SamplingSpec, vocab: int):
    k = sampling.top_k if 0 < sampling.top_k < vocab else None
    p = sampling.top_p if sampling.top_p < 1.0 else None
    return k, p


def _kth(x, k: int):
    """The k-th largest value of each row, [N, 1] (top-k keeps what is >= it, ties included)."""
    return x.topk(k, dim=-1).values[:, -1:]


def process_logits(logits, sampling: SamplingSpec, tie_rule: str = "keep_ties"):
    """Apply temperature, top-k, top-p to fp32 logits [N, V], mirroring vLLM V1's sampler.

    vLLM V1 (v1/sample/sampler.py, ops/topk_topp_sampler.py): logits are cast to fp32; greedy
    requests (T < 1e-5) are not tempered; otherwise logits /= T, then top-k, then top-p over
    what top-k kept; masked tokens get -inf. The tie rule (see tie_rule_for) decides ties:

    "keep_ties" (PyTorch path, `apply_top_k_only` / `apply_top_k_top_p_pytorch`, used on CPU):
        top-k keeps every token whose logit is >= the k-th largest (ties kept, maybe > k);
        top-p sorts ascending, softmaxes, and masks positions whose cumulative probability is
        <= 1 - p (p as fp32, as vLLM holds it), always keeping the largest; a tie group at the
        top-p cut is split in torch.sort's order.
    "exact_k" (Triton kernel `apply_top_k_top_p_triton`, used on CUDA): top-k keeps exactly k,
        top-p keeps the smallest set of highest-probability tokens whose mass is >= p; among
        tokens tied at either cut the kernel keeps the lowest token ids (its duplicate budget
        runs in index order), and so does this function. This is the kernel's rule in exact
        arithmetic; its fp32 pivot search may cut one token differently when the top-p mass
        lands within rounding of p.
    """
    import torch  # lazy: torch takes seconds to import

    if tie_rule not in TIE_RULES:
        raise ValueError(f"tie_rule must be one of {TIE_RULES}, got {tie_rule!r}")
    if sampling.temperature < GREEDY_EPS:
        return logits
    x = logits / sampling.temperature
    k, p = _top_k_p(sampling, x.shape[-1])
    if k is None and p is None:
        return x
    p32 = None if p is None else torch.tensor(p, dtype=torch.float32)
    if tie_rule == "exact_k":
        # Stable descending sort: equal logits stay in token-id order, lowest id first.
        x_sort, idx = x.sort(dim=-1, descending=True, stable=True)
        if k is not None:
            x_sort[:, k:] = float("-inf")
        if p is not None:
            cum = x_sort.softmax(dim=-1).cumsum(dim=-1)
            before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], dim=-1)
            x_sort = x_sort.masked_fill(before >= p32, float("-inf"))
        return torch.empty_like(x).scatter_(-1, idx, x_sort)
    if p is None:
        return x.masked_fill(x < _kth(x, k), float("-inf"))
    x_sort, idx = x.sort(dim=-1, descending=False)
    if k is not None:
        kth = x_sort[:, x_sort.shape[-1] - k].unsqueeze(-1)
        x_sort = x_sort.masked_fill(x_sort < kth, float("-inf"))
    cum = x_sort.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= 1 - p32
    drop[:, -1] = False
    x_sort = x_sort.masked_fill(drop, float("-inf"))
    return torch.empty_like(x).scatter_(-1, idx, x_sort)


def tie_rule_for(platform: str | None, vllm_version: str | None) -> str:
    """The tie rule of the vLLM V1 sampler on `platform` (vllm `current_platform.device_type`).

    Read in vllm 0.32.0 (vllm/v1/sample/ops/topk_topp_sampler.py): `apply_top_k_top_p` calls
    `apply_top_k_top_p_triton` (ops/topk_topp_triton.py, the Qrita pivot kernel, vLLM PR #33538)
    whenever Triton is importable, for any batch size, which is the case on CUDA and ROCm;
    FlashInfer is not used when processed logprobs are requested. Its duplicate handling keeps
    exactly k (and at the top-p cut the fewest tokens reaching mass p), lowest ids first:
    "exact_k". The CPU build has no Triton, so it runs `apply_top_k_top_p_pytorch` with
    `allow_cpu_sync=True` (top-k only: `apply_top_k_only`), which keeps ties: "keep_ties".
    V0 (0.8.5) keeps ties too. CUDA before 0.32 is not verified here: versions before the
    Triton kernel used the PyTorch path, and vLLM PR #50979 describes versions that chose Triton
    only for batches of >= 8 rows, so the rule there depends on the batch; "keep_ties" is
    returned and boundary_ties marks the tokens where it matters. Unknown platforms: keep_ties.
    """
    if platform not in ("cuda", "rocm"):
        return "keep_ties"
    m = re.match(r"(\d+)\.(\d+)", vllm_version or "")
    return "exact_k" if m and (int(m.group(1)), int(m.group(2))) >= (0, 32) else "keep_ties"


def boundary_ties(logits, sampling: SamplingSpec, tokens=None, processed=None):
    """Bool [N]: rows where the top-k or top-p cut falls inside a group of equal logits, so the
    kept set depends on the tie rule (how many are kept) or on which tied ids a kernel keeps.

    With `tokens` [N] (e.g. the sampled tokens): True only where that token is itself in the
    tied group at the cut. With the platform's rule (tie_rule_for) only these positions can
    differ from the engine: the tied tokens have equal values, so the kept values and the
    normalisation do not depend on which ids are kept, only the tied token's own membership
    does. They are an allowance: the reference may exclude a sampled token the engine kept, or
    the reverse. (With the wrong rule a tie at k changes the normalisation of the whole row.)
    `processed`: process_logits's output under either rule, if already computed.
    """
    import torch  # lazy: torch takes seconds to import

    n = logits.shape[0]
    none = torch.zeros(n, dtype=torch.bool)
    if sampling.temperature < GREEDY_EPS:
        return none
    x = logits / sampling.temperature
    k, p = _top_k_p(sampling, x.shape[-1])
    if k is None and p is None:
        return none
    if processed is None:
        processed = process_logits(logits, sampling)
    kept = torch.isfinite(processed)
    low = torch.where(kept, x, float("inf")).amin(dim=-1, keepdim=True)  # lowest kept logit
    split = (~kept & (x == low)).any(dim=-1)
    at = None if tokens is None else x.gather(-1, torch.as_tensor(tokens).view(-1, 1))
    if at is not None:
        split &= (at == low).squeeze(-1)
    if k is not None:
        # More tokens at or above the k-th value than k: keep_ties keeps them all, exact_k cuts.
        kth = _kth(x, k)
        tied_k = (x >= kth).sum(dim=-1) > k
        if at is not None:
            tied_k &= (at == kth).squeeze(-1)
        split |= tied_k
    return split


def cut_distances(logits, sampling: SamplingSpec, target, processed):
    """[N] how far outside the top-k/top-p cut each target token sits, in tempered logits: the
    least spread (max - min over the vocabulary) of an error added to logits / T that could
    bring it back inside; 0 where `processed` (process_logits of the same fp32 logits [N, V])
    keeps it. `target` [N, 1].

    An error e on the tempered logits x moves any difference x_i - x_j by at most
    spread(e) = max e - min e, and the log-odds of any set of tokens against the rest of a set
    that contains it (a top-p cumulative mass) by at most spread(e) too. So a token excluded
    by top-k needs spread >= x_kth - x_t (the k-th largest value), and one excluded by top-p
    needs spread >= logit(C) - logit(p), where C is the mass of the kept-by-top-k tokens above
    it, renormalised over them and the token (top-p acts after top-k). The distance is the
    larger of the two: an engine whose logits differ from the trainer's by a spread below it
    cannot have kept the token with the same top_k/top_p (ties at the cut aside).
    """
    import torch  # lazy: torch takes seconds to import

    kept_t = torch.isfinite(processed).gather(-1, target).squeeze(-1)
    if sampling.temperature < GREEDY_EPS:
        return torch.zeros(kept_t.shape, dtype=torch.float32)
    x = logits / sampling.temperature
    k, p = _top_k_p(sampling, x.shape[-1])
    at = x.gather(-1, target)
    dist = x.new_zeros(x.shape[0])
    in_k = torch.ones_like(x, dtype=torch.bool)
    if k is not None:
        kth = _kth(x, k)
        in_k = x >= kth
        dist = (kth - at).clamp(min=0).squeeze(-1)
    if p is not None:
        z = torch.where(in_k, x, float("-inf"))
        above = torch.where(z > at, z, float("-inf")).logsumexp(dim=-1)
        rest = torch.where(in_k & (z <= at), z, float("-inf")).logsumexp(dim=-1)
        rest = torch.logaddexp(
            rest, torch.where(in_k.gather(-1, target), -torch.inf, at).squeeze(-1)
        )
        # logit(C) = log(mass above) - log(the rest, the token included).
        p32 = float(torch.tensor(p, dtype=torch.float32))  # p as vLLM holds it
        logit_p = math.log(p32 / (1 - p32))
        dist = torch.maximum(dist, (above - rest - logit_p).clamp(min=0))
    return torch.where(kept_t, torch.zeros_like(dist), dist)


def tempered_and_kept(logits, processed, sampling: SamplingSpec):
    """([N] tempered log-softmax rows, [N] log kept mass) of fp32 logits [N, V].

    tempered: log_softmax(logits / T) over the full vocabulary, what verl, TRL, OpenRLHF and
    prime-rl compute (a greedy request, T below GREEDY_EPS, is not tempered, as in vLLM).
    log kept mass: log of the tempered probability mass of the tokens `processed` (this
    module's process_logits of the same logits) keeps, logsumexp(kept) - logsumexp(all); 0
    exactly where nothing is cut. For a kept token, processed = tempered - log kept mass.
    Returns the [N, V] tempered log-softmax and the [N] log kept mass.
    """
    greedy = sampling.temperature < GREEDY_EPS
    x = logits if greedy else logits / sampling.temperature
    if greedy or _top_k_p(sampling, x.shape[-1]) == (None, None):
        return x.log_softmax(dim=-1), x.new_zeros(x.shape[0])
    return x.log_softmax(dim=-1), processed.logsumexp(dim=-1) - x.logsumexp(dim=-1)


def _entropy(logprobs):
    import torch  # lazy: torch takes seconds to import

    p = logprobs.exp()
    return -(torch.where(p > 0, p * logprobs, torch.zeros_like(p))).sum(dim=-1)
