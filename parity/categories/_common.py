"""Pieces the engine-vs-trainer categories share: the gaps of sampled-token logprobs to the
reference, the resampling units, and the findings built from them."""

from __future__ import annotations

from typing import Any

import numpy as np

from parity import core, metrics, stats
from parity.engines.base import Sequence
from parity.reference import RefScore

# Sampled tokens the trainer's processed distribution excludes that a correct engine may still
# produce: ties at the top-k boundary (the CUDA kernel keeps exactly k of them, parity's
# reference keeps all or exactly k, whichever rule the engine's platform uses) and the top-p
# boundary (cumulative probability within float rounding of 1 - p). Counted by the reference
# per token (RefScore.boundary_tie); any other excluded token is a mismatch.
EXCLUDED_TOKENS_DEFAULT = 0


def arrays(values) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.float64) for v in values]


def logprob_gaps(seqs: list[Sequence], scores: list[RefScore], clip: metrics.ClipRange,
                 ) -> dict[str, Any]:
    """An engine's sampled-token logprobs against the reference's processed and raw logprobs:
    {"vs_processed": summary, "vs_raw": summary, "per_seq": per-sequence arrays}."""
    cand = arrays([s.logprobs for s in seqs])
    processed = arrays([r.processed_logprob for r in scores])
    raw = arrays([r.raw_logprob for r in scores])
    entropy = arrays([r.entropy for r in scores])
    summary = metrics.summarize(processed, cand, entropy, clip)
    per_seq = metrics.per_sequence(processed, cand, entropy, clip)
    vs_raw = metrics.summarize(raw, cand, None, clip)
    # Excluded sampled tokens that sit in a group of equal logits at the top-k/top-p cut: the
    # engine's platform may keep another member of the tie (the allowance, not a mismatch).
    summary["n_at_boundary"] = int(sum(
        int(np.sum(np.isneginf(r.processed_logprob) & np.asarray(r.boundary_tie, bool)))
        for r in scores if getattr(r, "boundary_tie", None) is not None))
    return {"vs_processed": summary, "vs_raw": vs_raw, "per_seq": per_seq}


def clusters(seqs: list[Sequence]) -> np.ndarray | None:
    """The resampling unit: the prompt when a prompt has several samples (its sequences are
    correlated), else None (each sequence is its own unit)."""
    ids = np.asarray([s.prompt_index for s in seqs])
    return ids if ids.size and len(np.unique(ids)) < ids.size else None


def tokens_precondition(n_tokens: int, min_tokens: int, what: str = "sampled tokens",
                        ) -> core.Precondition:
    return core.at_least("n_tokens", n_tokens, min_tokens,
                         f"only {n_tokens} {what} (< {min_tokens}): too little data to decide")


def excluded_finding(summary: dict[str, Any], tolerances: dict[str, float]) -> core.Finding:
    """Sampled tokens the trainer's processed distribution gives probability 0: at most the
    tolerance plus the tokens sitting exactly on a top-k/top-p boundary."""
    allowed = int(tolerances.get("excluded_tokens", EXCLUDED_TOKENS_DEFAULT))
    boundary = int(summary.get("n_at_boundary", 0))
    count = int(summary.get("n_ref_excluded", 0))
    return core.count_limit(
        "excluded_tokens", count, allowed + boundary, int(summary.get("n_tokens", 0)),
        note=f"{count} sampled token(s) outside the trainer's top-k/top-p support "
             f"(allowed {allowed} + {boundary} on a tie or top-p boundary)")


def support_fix(count: int, n_tokens: int) -> str:
    return (f"{count} of {n_tokens} sampled tokens are impossible under the trainer's processed "
            "distribution (probability 0): the engine's sampler and the reference disagree on "
            "the support. Check that the engine gets the same top_k/top_p/min_p as the trainer "
            "assumes (request parameters, generation_config defaults), the top-k tie rule of "
            "its platform, and sampling parameters the reference does not model (min_p, "
            "penalties, logit bias)")


def threshold_findings(per_seq: dict[str, np.ndarray], summary: dict[str, Any],
                       tolerances: dict[str, float], groups: np.ndarray | None,
                       ) -> list[core.Finding]:
    """The per-sequence mean |dlogp| and k3 KL against their tolerances (one-sample bound on
    the mean over sequences, or over prompts when they have several samples), and the p99."""
    out = []
    for name, key in (("abs_dlogp_seqmean", "abs_dlogp_mean"), ("kl_k3_seqmean", "kl_k3_mean")):
        limit = tolerances.get(key)
        if limit is not None:
            out.append(core.from_test(name, stats.threshold(per_seq[key], limit,
                                                            clusters=groups)))
    if "abs_dlogp_p99" in tolerances:
        out.append(core.bound("abs_dlogp_p99", summary["abs_dlogp_p99"],
                              tolerances["abs_dlogp_p99"]))
    return out
