"""The trainer-scorer interface: what parity needs from whatever computes the trainer's logprobs
of sampled tokens (parity's HF transformers reference, or a lab's own Megatron/FSDP scorer
offered through the `parity.scorers` entry-point group)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from parity.engines.base import SamplingSpec
from parity.trainer.reference import RefScore


@runtime_checkable
class Scorer(Protocol):
    """Scores completions the way the trainer computes them, by teacher forcing.

    Constructed as `factory(model_path, head_dtype, *, model_fp, cache, tie_rule, device)`:
        model_path: the checkpoint directory the engines load.
        head_dtype: "float32" (fp32 lm_head, as RL trainers compute logits) or "model".
        model_fp: the weights' fingerprint (a cache key; None: do not cache).
        cache: a parity.trainer.reference.ScoreCache the scorer may use (or ignore).
        tie_rule: the engine platform's top-k/top-p tie rule (parity.trainer.sampler).
        device: "cpu", "cuda" or "cuda:N" (resolved, never "auto").

    Attributes:
        stats: counters the run reports: "forward_s" and "load_s" (seconds), "scored_tokens",
            "scored_seqs", "cached_seqs" and "device".
    """

    stats: dict[str, Any]

    def score(
        self,
        pairs: list[tuple[list[int], list[int]]],
        sampling: SamplingSpec,
    ) -> list[RefScore]:
        """One RefScore per (prompt token ids, completion token ids) pair, one entry per
        completion token: raw and processed logprob, entropy of the processed distribution."""

    def close(self) -> None:
        """Free the model (called once, when the run has judged every scenario)."""
