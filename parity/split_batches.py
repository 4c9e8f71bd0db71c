"""Batched scoring for parity.updates.SplitScorer: many (prompt, tokens, boundary) items per
forward, right-padded and masked. The old weights run once over each whole sequence; a split
item's new-weight suffix then attends to that pass's KV cut at its own boundary."""

from __future__ import annotations

import numpy as np

from parity.engines.base import SamplingSpec

# Padded positions per forward, cache included: bounds the activations and the KV held for a
# chunk (SmolLM2-135M: ~46 KB of fp32 KV per position, so ~190 MB at this size).
MAX_BATCH_TOKENS = 4096


def score_items(old, new, items, sampling: SamplingSpec, one=None,
                max_tokens: int = MAX_BATCH_TOKENS) -> list[np.ndarray]:
    """Processed logprob of each item's completion tokens, positions < boundary by the `old`
    (model, head) pair and the rest by `new` over the old KV (SplitScorer.score's semantics).

    Args:
        old, new: (model-like with .base_model, head) pairs.
        items: (prompt, tokens, boundary) triples; equal items are scored once.
        one: fallback scoring one item alone, `one(prompt, tokens, boundary)`, for a model whose
            cache cannot be cut per row (sliding-window layers).
        max_tokens: padded positions per forward.
    Returns: one float64 array per item (empty for an empty completion).
    """
    from parity.reference import chunk_budget, chunk_rows

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
    results = {(s, b): np.zeros(len(keys[s][1])) for s, b in jobs}
    rows = _Rows(results)
    fresh = sorted({s for s, b in jobs if b == 0}, key=lambda s: -len(inputs[s]))
    for chunk in _chunks([len(inputs[s]) for s in fresh], max_tokens):
        sids = [fresh[j] for j in chunk]
        hidden, _ = _forward(new[0].base_model, [inputs[s] for s in sids])
        for r, s in enumerate(sids):
            first = len(keys[s][0]) - 1
            rows.add(new[1], hidden[r, first:len(inputs[s])], keys[s][1], (s, 0), 0)
        del hidden
    # The old weights run once per sequence, as far as its largest boundary.
    reach = {}
    for s, b in jobs:
        if b > 0:
            reach[s] = max(reach.get(s, 0), b)
    split = sorted(reach, key=lambda s: -reach[s])
    for chunk in _chunks([reach[s] for s in split], max_tokens):
        sids = [split[j] for j in chunk]
        bounds = [(r, s, b) for r, s in enumerate(sids) for b in _bounds(jobs, s)]
        cut = [(r, s, b) for r, s, b in bounds if b < len(inputs[s])]
        hidden, kv = _forward(old[0].base_model, [inputs[s][:reach[s]] for s in sids],
                              bool(cut))
        for r, s, b in bounds:  # the positions before the boundary: the old weights predict
            first = len(keys[s][0]) - 1
            rows.add(old[1], hidden[r, first:max(first, b)], keys[s][1][:max(0, b - first)],
                     (s, b), 0)
        del hidden
        if cut and kv is None:
            for r, s, b in cut:
                results[(s, b)] = one(*keys[s], b)
            continue
        for part in _chunks([len(inputs[s]) + b for _, s, b in cut], max_tokens):
            sub = [cut[j] for j in part]
            hidden = _suffix(new[0].base_model, kv, [(r, inputs[s], b) for r, s, b in sub])
            for q, (r, s, b) in enumerate(sub):
                first = len(keys[s][0]) - 1
                lo = max(first, b)
                rows.add(new[1], hidden[q, lo - b:len(inputs[s]) - b], keys[s][1][lo - first:],
                          (s, b), lo - first)
            del hidden
        del kv
    rows.score(sampling, chunk_rows(int(new[1].weight.shape[0]), chunk_budget("cpu")))
    out = [np.zeros(0)] * len(items)
    for key, idx in jobs.items():
        for i in idx:
            out[i] = results[key].copy()
    return out


def _bounds(jobs, sid: int) -> list[int]:
    return sorted(b for s, b in jobs if s == sid and b > 0)


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


def _forward(body, seqs: list[list[int]], cache: bool = False):
    """Right-padded forward of whole sequences: (last hidden states [B, W, H], the per-layer
    (keys, values) when `cache`, None if a layer is sliding-window)."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
    out = body(input_ids=ids, attention_mask=mask, use_cache=cache)
    if not cache:
        return out.last_hidden_state, None
    layers = [tuple(layer) for layer in out.past_key_values]
    if any(len(layer) > 2 and layer[2] is not None for layer in layers):
        return out.last_hidden_state, None
    return out.last_hidden_state, [(k, v) for k, v, *_ in layers]


def _suffix(body, kv, rows: list[tuple[int, list[int], int]]):
    """The new weights over positions [b, len) of each (cache row, sequence, b), attending to
    that row's cached KV of positions < b: hidden states [n, S, H], index 0 = position b."""
    import torch
    from transformers import DynamicCache

    cut = max(b for _, _, b in rows)
    width = max(len(s) - b for _, s, b in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), cut + width), dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for q, (_, s, b) in enumerate(rows):
        n = len(s) - b
        ids[q, :n] = torch.tensor(s[b:])
        mask[q, :b] = 1  # the cache past b (this row's own later positions, padding) is masked
        mask[q, cut:cut + n] = 1
        pos[q] = torch.arange(b, b + width)  # the true positions: RoPE sees no gap
    idx = torch.tensor([r for r, _, _ in rows])
    cache = DynamicCache([(k[idx, :, :cut], v[idx, :, :cut]) for k, v in kv])
    out = body(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
               use_cache=True)
    return out.last_hidden_state


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
        import torch

        from parity.reference import score_rows

        for head, hidden, targets, where in self.heads.values():
            _, lp, _, _ = score_rows(head, torch.cat(hidden), torch.tensor(targets), sampling,
                                     rows=chunk)
            at = 0
            for key, start, n in where:
                self.results[key][start:start + n] = lp[at:at + n]
                at += n
        self.heads.clear()
