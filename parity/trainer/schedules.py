"""A weight update pushed in buckets while the engine keeps stepping, the trainer side: which
components each bucket carries (the layout the engine is sent), and the logprobs a sequence gets
when each of its positions ran under the weight state its labels give (state j: the first j
buckets new, the rest old: a hybrid model of parity.trainer.hybrids)."""

from __future__ import annotations

import json
import os

import numpy as np

from parity.engines.base import SamplingSpec
from parity.trainer.hybrids import HEAD, HybridModel
from parity.trainer.sampler import process_logits
from parity.verdicts.mixing import chunks

# The checkpoint (Hugging Face Llama-style) names of each component, as prefixes.
_PREFIX = {"embed_tokens": "model.embed_tokens.", "norm": "model.norm.", HEAD: "lm_head."}


def n_layers(model_path: str) -> int:
    """num_hidden_layers of a checkpoint directory's config.json."""
    with open(os.path.join(model_path, "config.json")) as f:
        return int(json.load(f)["num_hidden_layers"])


def layout(layers: int, n_buckets: int) -> list[list[str]]:
    """The components of each bucket, in model order, as hybrids.HybridModel names them: the
    embedding and the output head together (a tied head is the embedding), each decoder layer,
    the final norm, split into n_buckets contiguous groups (fewer when there are fewer units)."""
    units = [["embed_tokens", HEAD]] + [[f"layers.{i}"] for i in range(layers)] + [["norm"]]
    groups = np.array_split(np.arange(len(units)), max(1, min(n_buckets, len(units))))
    return [[name for u in g for name in units[u]] for g in groups]


def prefixes(bucket: list[str]) -> list[str]:
    """The checkpoint tensor-name prefixes of one bucket's components."""
    return [_PREFIX.get(c) or f"model.{c}." for c in bucket]


def stale_at(buckets: list[list[str]], state: int) -> frozenset[str]:
    """The components still old in state `state` (the first `state` buckets pushed)."""
    return frozenset(c for b in buckets[state:] for c in b)


class ScheduleScorer:
    """Scores sequences whose positions ran under different weight states (SplitScorer's
    models; the hybrid states through one hybrids.HybridModel)."""

    def __init__(self, scorer, buckets: list[list[str]]):
        self.scorer, self.buckets = scorer, buckets
        self._hybrid = None

    def _pair(self, state: int):
        old, new = self.scorer.pairs()
        if state <= 0:
            return old
        if state >= len(self.buckets):
            return new
        if self._hybrid is None:
            self._hybrid = HybridModel(old, new)
        self._hybrid.set(stale_at(self.buckets, state))
        return self._hybrid.pair()

    def score(
        self,
        prompt: list[int],
        tokens: list[int],
        states: list[int],
        sampling: SamplingSpec,
        cached: int = 0,
    ) -> np.ndarray:
        """Processed logprob of each completion token, each run of input positions under its
        own state over the KV the earlier runs left, the first `cached` prompt positions under
        the old weights (parity.verdicts.mixing.chunks)."""
        if not tokens:
            return np.zeros(0)
        self.scorer.tokens += len(tokens)
        return self.scorer._timed(lambda: self._score(prompt, tokens, states, sampling, cached))

    def _score(self, prompt, tokens, states, sampling, cached) -> np.ndarray:
        import torch  # lazy: torch takes seconds to import

        ids = torch.tensor([list(prompt) + list(tokens)])
        first = len(prompt) - 1
        parts, cache = [], None
        for start, end, state in chunks(len(prompt), list(states), cached):
            pair = self._pair(state)  # outside inference mode: it writes the hybrid's weights
            with torch.inference_mode():
                out = pair[0].base_model(
                    input_ids=ids[:, start:end], past_key_values=cache, use_cache=True
                )
                cache = out.past_key_values
                rows = out.last_hidden_state[0, max(first, start) - start :]
                if len(rows):
                    parts.append(pair[1](rows))
        with torch.inference_mode():
            logp = process_logits(torch.cat(parts), sampling).log_softmax(dim=-1)
            target = torch.tensor(list(tokens)).unsqueeze(-1)
            return logp.gather(-1, target).squeeze(-1).double().numpy()

    def close(self) -> None:
        if self._hybrid is not None:
            self._hybrid.set(frozenset())
