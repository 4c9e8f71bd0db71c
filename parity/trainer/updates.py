"""Weight updates, the trainer side (the scenario's `update` table: parity.trainer.update_spec): a
trainer holding the old and the new checkpoint that scores sequences under each hypothesis
(old weights, new weights, keep the old KV, recompute, a stale prefix cache), many at once
(parity.trainer.split_batches)."""

from __future__ import annotations

import time

import numpy as np

from parity.engines.base import SamplingSpec
from parity.setup import models
from parity.setup.checkpoints import with_old_layers
from parity.setup.models import perturb
from parity.setup.trainstep import train_step
from parity.trainer.heads import model_head
from parity.trainer.loading import load_causal_lm, load_update
from parity.trainer.sampler import process_logits
from parity.trainer.split_batches import score_items
from parity.trainer.update_spec import UpdateSpec

# ----------------------------------------------------------------------------- the trainer side


class SplitScorer:
    """The trainer holding two checkpoints: scores a sequence whose positions before `boundary`
    were computed (KV and logits) by the old weights and the rest by the new weights attending to
    that old KV, as an engine that swaps weights between two steps does.

    In an engine step loop a request's prefill computes the KV of every prompt position and
    samples completion token 1; each later step computes the KV of the last sampled token and
    samples the next. So after k >= 1 tokens sampled under v1, positions [0, P+k-1) hold v1 KV
    and token k's own KV (position P+k-1) is computed by v2 in the first step after the update:
    boundary = P + k - 1 (`keep_boundary`). boundary = 0: all v2; >= len: all v1.

    Args:
        old_path, new_path: the two checkpoints (same architecture and tokenizer).
        head_dtype: "float32" (lm_head in fp32, as trainers do) or "model".
        dtype: torch dtype name the models run in ("bfloat16", "float32"; None = checkpoint's).
    """

    def __init__(
        self, old_path: str, new_path: str, head_dtype: str = "float32", dtype: str | None = None
    ):
        self.paths = (str(old_path), str(new_path))
        self.head_dtype = head_dtype
        self.dtype = dtype
        self._models = None
        # Tensors the new checkpoint lacks, scored with the old weights as the engine keeps
        # them (parity.trainer.loading.load_update); set once the models are loaded.
        self.kept_old: list[str] = []
        self.seconds = 0.0  # model loads and forwards: the trainer side's scoring time
        self.tokens = 0  # completion tokens scored

    def _timed(self, fn):
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds += time.perf_counter() - t0

    def _load(self):
        if self._models is None:
            old = _loaded(self.paths[0], self.dtype, self.head_dtype)
            new = _loaded(self.paths[1], self.dtype, self.head_dtype, base=self.paths[0])
            self._models = [old, new]
            self.kept_old = _KEPT.get((self.paths[1], self.dtype, self.head_dtype, self.paths[0]))
        return self._models

    def pairs(self):
        """((old model, old head), (new model, new head)), loaded once per run."""
        return tuple(self._timed(self._load))

    @staticmethod
    def _logits(model_and_head, hidden):
        return model_and_head[1](hidden)

    def score(
        self, prompt: list[int], tokens: list[int], boundary: int, sampling: SamplingSpec, new=None
    ) -> np.ndarray:
        """Processed logprob of each completion token (positions < boundary by the old weights,
        the rest by the new weights over the old KV), one sequence alone: the definition
        `score_many` is tested against. `new`: a (model, head) pair standing in for the new
        weights (a hybrid hypothesis, parity.trainer.hybrids)."""
        import torch  # lazy: torch takes seconds to import

        self.tokens += len(tokens)
        with torch.inference_mode():
            return self._timed(lambda: self._score(prompt, tokens, boundary, sampling, new))

    def _score(self, prompt, tokens, boundary, sampling, new_pair=None) -> np.ndarray:
        import torch  # lazy: torch takes seconds to import

        if not tokens:
            return np.zeros(0)
        old, new = self._load()
        new = new_pair or new
        seq = list(prompt) + list(tokens)
        ids = torch.tensor([seq])
        b = max(0, min(int(boundary), len(seq)))
        first, last = len(prompt) - 1, len(seq) - 1  # positions predicting the completion
        parts, cache = [], None
        if b > 0:
            out = old[0].base_model(input_ids=ids[:, :b], use_cache=b < len(seq))
            cache = out.past_key_values
            rows = out.last_hidden_state[0, first : min(b, last)]
            if len(rows):
                parts.append(self._logits(old, rows))
        if b < len(seq):
            out = new[0].base_model(
                input_ids=ids[:, b:], past_key_values=cache, use_cache=cache is not None
            )
            lo = max(first, b) - b
            rows = out.last_hidden_state[0, lo : last - b]
            if len(rows):
                parts.append(self._logits(new, rows))
        logits = torch.cat(parts)
        logp = process_logits(logits, sampling).log_softmax(dim=-1)
        target = torch.tensor(tokens).unsqueeze(-1)
        return logp.gather(-1, target).squeeze(-1).double().numpy()

    def score_many(
        self, items: list[tuple[list[int], list[int], int]], sampling: SamplingSpec, new=None
    ) -> list[np.ndarray]:
        """`score` of many (prompt, tokens, boundary) items in batched forwards that share
        the work sequences have in common (a prompt template, a prompt sampled twice, the
        old weights' pass under every boundary of a sequence: parity.trainer.split_batches); equal
        to scoring each alone with `score` up to float rounding."""
        import torch  # lazy: torch takes seconds to import

        self.tokens += sum(len(t) for _, t, _ in items)

        def scored():
            old, default = self._load()
            with torch.inference_mode():
                return score_items(
                    old,
                    new or default,
                    items,
                    sampling,
                    one=lambda p, t, b: self._score(p, t, b, sampling, new),
                )

        return self._timed(scored)

    def old_many(self, pairs, sampling) -> list[np.ndarray]:
        """`old` of many (prompt, tokens) pairs."""
        return self.score_many([(p, t, len(p) + len(t)) for p, t in pairs], sampling)

    def new_many(self, pairs, sampling, new=None) -> list[np.ndarray]:
        """`new` of many (prompt, tokens) pairs; `new`: a stand-in pair as in `score`."""
        return self.score_many([(p, t, 0) for p, t in pairs], sampling, new)

    def keep_many(self, pairs, ks: list[int], sampling, new=None) -> list[np.ndarray]:
        """`keep` of many (prompt, tokens) pairs, k tokens sampled before the update each."""
        return self.score_many(
            [(p, t, keep_boundary(len(p), k)) for (p, t), k in zip(pairs, ks)], sampling, new
        )

    def old(self, prompt, tokens, sampling) -> np.ndarray:
        """Everything under the old weights."""
        return self.score(prompt, tokens, len(prompt) + len(tokens), sampling)

    def new(self, prompt, tokens, sampling) -> np.ndarray:
        """Everything under the new weights (full recompute)."""
        return self.score(prompt, tokens, 0, sampling)

    def keep(self, prompt, tokens, k: int, sampling) -> np.ndarray:
        """Keep semantics: k tokens sampled under the old weights, the rest by the new weights
        over the old KV of everything computed before the update."""
        return self.score(prompt, tokens, keep_boundary(len(prompt), k), sampling)

    def recompute(self, prompt, tokens, k: int, sampling) -> np.ndarray:
        """Recompute semantics: k tokens under the old weights, then the new weights over the
        whole sequence recomputed (no old KV)."""
        out = self.new(prompt, tokens, sampling)
        if k > 0:
            out[:k] = self.old(prompt, tokens[:k], sampling)
        return out


# (checkpoint, dtype, head dtype, base) -> (model, head): the trainer holds each checkpoint once per
# process, whatever the number of update scenarios using it (the last few are kept).
_MODELS: dict[tuple[str, str | None, str, str | None], tuple] = {}
_KEPT: dict[tuple[str, str | None, str, str | None], list[str]] = {}
_KEEP_MODELS = 4


def _loaded(path: str, dtype: str | None, head_dtype: str, base: str | None = None):
    """(model, head) of a checkpoint; with `base`, an update checkpoint whose missing tensors
    keep base's values (loading.load_update, the names in _KEPT); without, refused when
    transformers would make tensors up (loading.load_causal_lm)."""
    import torch  # lazy: torch takes seconds to import

    key = (path, dtype, head_dtype, base)
    if key not in _MODELS:
        while len(_MODELS) >= _KEEP_MODELS:
            _MODELS.pop(next(iter(_MODELS)))
        torch_dtype = getattr(torch, dtype) if dtype else "auto"
        if base is None:
            model = load_causal_lm(path, dtype=torch_dtype).eval()
        else:
            old = _loaded(base, dtype, head_dtype)[0]
            model, _KEPT[key] = load_update(old, path, dtype=torch_dtype)
            model.eval()
        # The model's own logit transform (bias, scale, softcap), as the trainer has it.
        _MODELS[key] = (model, model_head(model, head_dtype))
    return _MODELS[key]


def keep_boundary(n_prompt: int, k: int) -> int:
    """First position whose KV the new weights compute when the update lands after k sampled
    tokens (0 when the request had not been prefilled)."""
    return n_prompt + k - 1 if k > 0 else 0


def cached_boundary(n_prompt: int, block_size: int) -> int:
    """Prompt tokens a full prefix-cache hit serves: whole blocks, never the last prompt token
    (the engine recomputes it to get logits)."""
    return ((n_prompt - 1) // block_size) * block_size if block_size > 0 else 0


# ----------------------------------------------------------------------------- the engine side


def target_path(sc, model_path: str, log=print) -> str:
    """The checkpoint a scenario updates to: the named one, else its model after a training step
    (train_steps >= 1) or perturbed."""

    spec: UpdateSpec = sc.options["update"]
    if spec.target:
        return str(models.resolve_model(spec.target, log=log))
    if spec.train_steps:
        return str(train_step(model_path, spec.seed, spec.train_steps, spec.lr, log=log))
    return str(perturb(model_path, spec.seed, spec.scale, log=log))


def pushed_path(sc, target: str, model_path: str, log=print) -> str:
    """The checkpoint the engine is sent: the target, or for a stale-layer negative control the
    target with those layers put back to the scenario's model."""
    spec: UpdateSpec = sc.options["update"]
    if not spec.stale_layers:
        return target

    return str(with_old_layers(target, model_path, list(spec.stale_layers), log=log))


def shared_context(prompts: list[list[int]], n: int) -> list[int]:
    """n tokens of context shared by every prompt: the prompts' own tokens, concatenated and
    repeated as needed (any valid token ids serve: the point is whole cached blocks)."""
    pool = [t for p in prompts for t in p]
    return [pool[i % len(pool)] for i in range(n)] if pool and n > 0 else []


def stream_check(paused: list[int], uninterrupted: list[int], k: int) -> str:
    """How the first k tokens of a request paused for an update compare with the same seeded
    request run without a pause: "equal"; "lost" (from some token on, the paused stream is the
    other one shifted left: a token went missing at the pause), "duplicated" (shifted right: a
    token was emitted twice); "diverged" (they differ otherwise, e.g. numerics picked another
    token); "short" (too few tokens of the uninterrupted run to compare)."""
    k = min(k, len(paused))
    if len(uninterrupted) < k:
        return "short"
    a, b = list(paused[:k]), list(uninterrupted[: k + 1])
    j = next((i for i in range(k) if a[i] != b[i]), None)
    if j is None:
        return "equal"
    rest = a[j:]  # a shift needs two tokens to tell it from one token sampled otherwise
    if len(rest) >= 2 and rest == b[j + 1 : j + 1 + len(rest)]:
        return "lost"
    if len(rest) >= 2 and a[j] == a[j - 1] and a[j + 1 :] == b[j : k - 1]:
        return "duplicated"
    return "diverged"
