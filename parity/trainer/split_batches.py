"""Batched scoring for parity.trainer.updates.SplitScorer: many (prompt, tokens, boundary) items per
forward, right-padded and masked. Each model runs once over what its sequences share (the
prefix common to all, each distinct prompt) and then over each sequence's rest; a split item's
new-weight suffix attends to the old weights' KV cut at its own boundary."""

from __future__ import annotations

import os

import numpy as np

from parity.engines.base import SamplingSpec
from parity.trainer.chunked import chunk_budget, chunk_rows, processed_rows

# Padded positions per forward, cache included: bounds the activations and the KV held for a
# chunk (SmolLM2-135M: ~46 KB of fp32 KV per position, so ~190 MB at this size).
MAX_BATCH_TOKENS = 4096
MIN_SHARED = 4  # a prefix common to every sequence is run once from this many tokens on


def score_items(
    old, new, items, sampling: SamplingSpec, one=None, max_tokens: int = MAX_BATCH_TOKENS
) -> list[np.ndarray]:
    """Processed logprob of each item's completion tokens, positions < boundary by the `old`
    (model, head) pair and the rest by `new` over the old KV (SplitScorer.score's semantics).

    Args:
        old, new: (model-like with .base_model, head) pairs.
        items: (prompt, tokens, boundary) triples, prompts not empty; equal items are scored
            once.
        one: scores one item alone, `one(prompt, tokens, boundary)`: used for every item when
            a model has sliding-window layers (their cache cannot be cut per row).
        max_tokens: padded positions per forward.
    Returns: one float64 array per item (empty for an empty completion).
    """

    if _sliding(old[0].base_model) or _sliding(new[0].base_model):
        return [one(p, t, b) if len(t) else np.zeros(0) for p, t, b in items]
    seqs: dict[tuple, int] = {}  # (prompt, tokens) -> sequence id
    jobs: dict[tuple[int, int], list[int]] = {}  # (sequence id, boundary) -> item indices
    for i, (prompt, tokens, boundary) in enumerate(items):
        if len(tokens):
            sid = seqs.setdefault((tuple(prompt), tuple(tokens)), len(seqs))
            # The inputs are the sequence less its last token (whose state predicts nothing):
            # a boundary from their end on is the old weights throughout.
            n = len(prompt) + len(tokens) - 1
            jobs.setdefault((sid, max(0, min(int(boundary), n))), []).append(i)
    keys = list(seqs)
    inputs = [list(p) + list(t[:-1]) for p, t in keys]
    firsts = [len(p) - 1 for p, _ in keys]  # the first position that predicts a completion token
    results = {(s, b): np.zeros(len(keys[s][1])) for s, b in jobs}
    rows = _Rows(results)

    def fresh(done, hidden, kv):  # all new weights: every predicting position
        for s, r, start in done:
            rows.add(
                new[1], hidden[r, firsts[s] - start : len(inputs[s]) - start], keys[s][1], (s, 0), 0
            )

    def split(done, hidden, kv):  # the old weights before each boundary, the new ones after
        cut = []
        for s, r, start in done:
            for b in sorted(b for ss, b in jobs if ss == s and b > 0):
                first = firsts[s]
                rows.add(
                    old[1],
                    hidden[r, first - start : max(first, b) - start],
                    keys[s][1][: max(0, b - first)],
                    (s, b),
                    0,
                )
                if b < len(inputs[s]):
                    cut.append((r, s, b))
        for part in _chunks([kv.pos.shape[1] + len(inputs[s]) - b for _, s, b in cut], max_tokens):
            sub = [cut[j] for j in part]
            out, _ = _segments(
                new[0].base_model, kv, [(r, inputs[s][b:], b) for r, s, b in sub], False
            )
            for q, (r, s, b) in enumerate(sub):
                lo = max(firsts[s], b)
                rows.add(
                    new[1],
                    out[q, lo - b : len(inputs[s]) - b],
                    keys[s][1][lo - firsts[s] :],
                    (s, b),
                    lo - firsts[s],
                )

    reach: dict[int, int] = {}  # how far the old weights run: the largest boundary
    for s, b in jobs:
        reach[s] = max(reach.get(s, 0), b)
    _shared_passes(
        new[0].base_model,
        inputs,
        firsts,
        {s: len(inputs[s]) for s, b in jobs if b == 0},
        max_tokens,
        fresh,
        False,
    )
    _shared_passes(
        old[0].base_model,
        inputs,
        firsts,
        {s: r for s, r in reach.items() if r},
        max_tokens,
        split,
        True,
    )
    rows.score(sampling, chunk_rows(int(new[1].weight.shape[0]), chunk_budget("cpu")))
    out = [np.zeros(0)] * len(items)
    for key, idx in jobs.items():
        for i in idx:
            out[i] = results[key].copy()
    return out


def _sliding(body) -> bool:
    cfg = getattr(body, "config", None)
    types = getattr(cfg, "layer_types", None) or []
    return "sliding_attention" in types or (
        getattr(cfg, "sliding_window", None) is not None
        and getattr(cfg, "use_sliding_window", True)
    )


def _shared_passes(
    body, inputs, firsts, reach: dict[int, int], max_tokens: int, visit, cache: bool
) -> None:
    """Run `body` over positions [0, reach[s]) of each sequence s, sharing work as a tree: the
    prefix common to all once, then each distinct prompt once (its own rest for a prompt of
    one sequence), then each sequence's rest. `visit(done, hidden, kv)` gets every chunk of
    finished sequences: done = (sequence, row, first position of the row), hidden [rows, W,
    H] and their KV (a _KV, or None unless `cache`)."""
    if not reach:
        return
    sids = sorted(reach, key=lambda s: -reach[s])
    # Shared segments end before every sequence's first predicting position and its reach.
    ends = {s: min(firsts[s], reach[s] - 1) for s in sids}
    common = min(
        len(os.path.commonprefix([tuple(inputs[s][: ends[s]]) for s in sids])),
        min(ends.values()) - 1,
    )  # so that every segment after it has a token
    root = None
    if len(sids) > 1 and common >= MIN_SHARED:
        _, root = _segments(body, None, [(0, inputs[sids[0]][:common], 0)], True)
    else:
        common = 0
    groups: dict[tuple, list[int]] = {}
    for s in sids:
        groups.setdefault(tuple(inputs[s][: firsts[s]]), []).append(s)
    top = []  # (tokens from `common` on, the group's sequences, where the segment ends)
    for members in groups.values():
        end = min([firsts[members[0]]] + [reach[s] for s in members])
        if len(members) > 1 and end > common:
            top.append((inputs[members[0]][common:end], members, end))
        else:  # a prompt of one sequence (or nothing to share): its whole rest at once
            top += [(inputs[s][common : reach[s]], [s], reach[s]) for s in members]
    for chunk in _chunks([common + len(t) for t, _, _ in top], max_tokens):
        part = [top[j] for j in chunk]
        hidden, kv = _segments(
            body,
            root,
            [(0, t, common) for t, _, _ in part],
            True if any(len(m) > 1 for _, m, _ in part) else cache,
        )
        visit(
            [(m[0], r, common) for r, (_, m, end) in enumerate(part) if len(m) == 1]
            + [
                (s, r, common)
                for r, (_, m, end) in enumerate(part)
                if len(m) > 1
                for s in m
                if reach[s] == end
            ],
            hidden,
            kv,
        )
        del hidden
        rest = [
            (r, s, end)
            for r, (_, m, end) in enumerate(part)
            if len(m) > 1
            for s in m
            if reach[s] > end
        ]
        for sub in _chunks(
            [kv.pos.shape[1] + reach[s] - end for _, s, end in rest] if rest else [], max_tokens
        ):
            items = [rest[j] for j in sub]
            hidden, leaf = _segments(
                body, kv, [(r, inputs[s][end : reach[s]], end) for r, s, end in items], cache
            )
            visit([(s, q, end) for q, (_, s, end) in enumerate(items)], hidden, leaf)
            del hidden, leaf
        del kv


def _chunks(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Consecutive index groups whose padded size (longest x count) stays within max_tokens
    (a longer item alone); `lengths` sorted longest first keeps the padding small."""
    out: list[list[int]] = []
    width = 0
    for j, n in enumerate(lengths):
        if out and max(width, n) * (len(out[-1]) + 1) <= max_tokens:
            out[-1].append(j)
            width = max(width, n)
        else:
            out.append([j])
            width = n
    return out


class _KV:
    """A forward's cache: per-layer (keys, values) [rows, heads, slots, dim] and the position
    each slot holds, -1 for padding (pos [rows, slots])."""

    def __init__(self, kv, pos):
        self.kv, self.pos = kv, pos


def _segments(body, parent: _KV | None, rows: list[tuple[int, list[int], int]], cache: bool):
    """`body` over each row's (parent row, tokens, start): the tokens at positions start on,
    attending to the parent row's cached positions before start (none without a parent).
    Returns hidden states [rows, W, H] (index j = position start + j) and, when `cache`,
    the rows' _KV (the parent's slots they saw, then their own)."""
    import torch  # lazy: torch takes seconds to import
    from transformers import DynamicCache  # lazy: transformers imports torch

    width = max(len(t) for _, t, _ in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    own = torch.full((len(rows), width), -1, dtype=torch.long)
    for q, (_, tokens, start) in enumerate(rows):
        ids[q, : len(tokens)] = torch.tensor(tokens)
        own[q, : len(tokens)] = torch.arange(start, start + len(tokens))
    starts = torch.tensor([start for _, _, start in rows])
    positions = starts[:, None] + torch.arange(width)  # the true positions: RoPE sees no gap
    past, slots = None, own
    if parent is not None:
        idx = torch.tensor([r for r, _, _ in rows])
        seen = parent.pos[idx]
        seen = torch.where(seen < starts[:, None], seen, -1)  # the row's own later positions
        # A layer replayed from a tape (parity.trainer.hybrids) cached nothing, and needs nothing.
        past = DynamicCache([(None, None) if k is None else (k[idx], v[idx]) for k, v in parent.kv])
        slots = torch.cat([seen, own], dim=1)
    # The mask in full (slots in order, causal by slot): then it is not sized from the cache
    # of layer 0, which a replayed layer 0 leaves empty.
    n_past = slots.shape[1] - width
    causal = torch.arange(slots.shape[1])[None, :] <= n_past + torch.arange(width)[:, None]
    allowed = (slots >= 0)[:, None, :] & causal[None]
    dtype = next(body.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    out = body(
        input_ids=ids,
        attention_mask=mask[:, None],
        position_ids=positions,
        past_key_values=past,
        use_cache=cache or past is not None,
    )
    if not cache:
        return out.last_hidden_state, None
    return out.last_hidden_state, _KV([(k, v) for k, v, *_ in out.past_key_values], slots)


class _Rows:
    """Hidden states waiting for their head, and where their logprobs go: the completion of
    `results[key]` from `start` on."""

    def __init__(self, results: dict):
        self.results = results
        self.heads: dict[int, tuple] = {}  # id(head) -> (head, [hidden], [targets], [where])

    def add(self, head, hidden, targets, key, start: int) -> None:
        if len(targets):
            entry = self.heads.setdefault(id(head), (head, [], [], []))
            entry[1].append(hidden)
            entry[2].extend(targets)
            entry[3].append((key, start, len(targets)))

    def score(self, sampling: SamplingSpec, chunk: int) -> None:
        """Every head once over all its rows (`chunk` rows at a time), into `results`."""
        import torch  # lazy: torch takes seconds to import

        for head, hidden, targets, where in self.heads.values():
            lp = processed_rows(
                head, torch.cat(hidden), torch.tensor(targets), sampling, rows=chunk
            )
            at = 0
            for key, start, n in where:
                self.results[key][start : start + n] = lp[at : at + n]
                at += n
        self.heads.clear()
