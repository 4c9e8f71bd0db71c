"""Tokens sampled from mixed weights, counted from per-token weight states (pure, no torch).

A weight update pushed in B buckets without pausing the engine passes through states 0 (the old
weights) .. B (the new ones); state j has the first j buckets new. Each sampled token carries
the state of the engine step that sampled it. In a step loop a request's prefill computes the KV
of every prompt position and samples completion token 0; the step that samples token i >= 1
computes the KV of token i - 1. So the forward that samples token i ran under state s[i] over KV
computed under s[0] (the prompt) .. s[i - 1]; with states never decreasing, it mixes weights when
s[i] is a hybrid state (0 < s[i] < B), or when s[0] != s[i] (new or hybrid weights sampling over
KV computed by older weights, the way a request kept in flight across an update continues).
A prompt that reused prefix-cache blocks computed under the old weights (`cached` > 0 tokens,
state 0) mixes the same way once it samples under other weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("old", "new", "hybrid", "new_on_old_kv")


def kinds(states: list[int], n_buckets: int, cached: int = 0) -> list[str]:
    """Each token's kind: "old" (state 0 throughout), "new" (state B throughout), "hybrid"
    (sampled under a hybrid state) or "new_on_old_kv" (sampled under the new weights over KV
    that older weights computed, `cached` > 0: prompt blocks from the prefix cache, computed
    under the old weights). The last two are the mixed ones."""
    out = []
    for s in states:
        if 0 < s < n_buckets:
            out.append("hybrid")
        elif s != states[0] or (cached and s != 0):
            out.append("new_on_old_kv")
        else:
            out.append("old" if s == 0 else "new")
    return out


def is_mixed(kind: str) -> bool:
    return kind in ("hybrid", "new_on_old_kv")


@dataclass
class MixCount:
    """Token counts over many sequences: by kind, by state, mixed sequences."""

    n_buckets: int
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    by_state: dict[int, int] = field(default_factory=dict)
    sequences_mixed: int = 0
    sequences: int = 0

    @property
    def mixed(self) -> int:
        return self.by_kind["hybrid"] + self.by_kind["new_on_old_kv"]

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def add(self, states: list[int], cached: int = 0) -> list[str]:
        """Count one sequence (`cached`: its prompt tokens from the prefix cache); returns its
        tokens' kinds."""
        ks = kinds(states, self.n_buckets, cached)
        for k, s in zip(ks, states):
            self.by_kind[k] += 1
            self.by_state[s] = self.by_state.get(s, 0) + 1
        self.sequences += 1
        self.sequences_mixed += any(is_mixed(k) for k in ks)
        return ks

    def to_dict(self) -> dict:
        return {
            "n_buckets": self.n_buckets,
            "tokens": self.total,
            "mixed": self.mixed,
            "by_kind": dict(self.by_kind),
            "by_state": {str(k): v for k, v in sorted(self.by_state.items())},
            "sequences": self.sequences,
            "sequences_mixed": self.sequences_mixed,
        }


def chunks(n_prompt: int, states: list[int], cached: int = 0) -> list[tuple[int, int, int]]:
    """The input positions of prompt + completion (less its last token) as (start, end, state)
    runs of one state: input position q >= n_prompt - 1 ran in the step that sampled completion
    token q - n_prompt + 1, under that token's state; the prompt positions before it ran in the
    prefill, under s[0], except the first `cached` ones, reused from the prefix cache (state 0)."""
    if not states:
        return []
    n_inputs = n_prompt + len(states) - 1
    out: list[tuple[int, int, int]] = []
    for q in range(n_inputs):
        s = 0 if q < min(cached, n_prompt - 1) else states[max(0, q - n_prompt + 1)]
        if out and out[-1][2] == s:
            out[-1] = (out[-1][0], q + 1, s)
        else:
            out.append((q, q + 1, s))
    return out
