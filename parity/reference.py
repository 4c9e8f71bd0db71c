"""The trainer-side reference: HF transformers scores (prompt, completion) token sequences by
teacher forcing, giving raw and processed logprobs and the exact entropy of the processed
distribution, with the lm_head in fp32 (as RL trainers compute it) or in the model dtype."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parity.engines.base import SamplingSpec
from parity.paths import cache_dir

# Bump when the scoring semantics change, so cached scores from older code are not reused.
SCORER_VERSION = 1
GREEDY_EPS = 1e-5  # vLLM V1's _SAMPLING_EPS: below this temperature a request is greedy
HEAD_DTYPES = ("float32", "model")


@dataclass
class RefScore:
    """Reference scores of one completion, one entry per completion token.

    raw_logprob: log softmax of the logits (no temperature, no truncation).
    processed_logprob: log prob under the distribution the sampler draws from (temperature,
        then top-k, then top-p, in vLLM V1's order and tie conventions); -inf for a token that
        distribution excludes.
    entropy: exact entropy (nats) of that processed distribution at each position.
    """

    raw_logprob: np.ndarray
    processed_logprob: np.ndarray
    entropy: np.ndarray


def process_logits(logits, sampling: SamplingSpec):
    """Apply temperature, top-k, top-p to fp32 logits [N, V], mirroring vLLM V1's sampler.

    vLLM V1 (v1/sample/sampler.py, ops/topk_topp_sampler.py): logits are cast to fp32; greedy
    requests (T < 1e-5) are not tempered; otherwise logits /= T, then top-k keeps every token
    whose logit is >= the k-th largest (ties kept), then top-p sorts ascending, softmaxes the
    (top-k masked) logits, and masks positions whose cumulative probability is <= 1 - p, always
    keeping the largest. Masked tokens get -inf.
    """
    import torch

    if sampling.temperature < GREEDY_EPS:
        return logits
    x = logits / sampling.temperature
    k = sampling.top_k if 0 < sampling.top_k < x.shape[-1] else None
    p = sampling.top_p if sampling.top_p < 1.0 else None
    if k is None and p is None:
        return x
    if p is None:
        kth = x.topk(k, dim=-1).values[:, -1:]
        return x.masked_fill(x < kth, float("-inf"))
    x_sort, idx = x.sort(dim=-1, descending=False)
    if k is not None:
        kth = x_sort[:, x_sort.shape[-1] - k].unsqueeze(-1)
        x_sort = x_sort.masked_fill(x_sort < kth, float("-inf"))
    cum = x_sort.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= 1 - p
    drop[:, -1] = False
    x_sort = x_sort.masked_fill(drop, float("-inf"))
    return torch.empty_like(x).scatter_(-1, idx, x_sort)


def _entropy(logprobs):
    import torch

    p = logprobs.exp()
    return -(torch.where(p > 0, p * logprobs, torch.zeros_like(p))).sum(dim=-1)


class ScoreCache:
    """Reference scores on disk, keyed by everything they depend on (weights, head dtype,
    sampling params, prompt and completion tokens), shared across runs and bisect trials."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_dir() / "refscores.sqlite"
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, data BLOB)")

    @staticmethod
    def key(model_fp: str, head_dtype: str, sampling: SamplingSpec, prompt: list[int],
            tokens: list[int]) -> str:
        h = hashlib.sha256()
        h.update(f"{SCORER_VERSION}|{model_fp}|{head_dtype}|{sampling.temperature!r}|"
                 f"{sampling.top_k}|{sampling.top_p!r}|".encode())
        h.update(np.asarray(prompt, dtype=np.int64).tobytes() + b"|")
        h.update(np.asarray(tokens, dtype=np.int64).tobytes())
        return h.hexdigest()

    def get(self, key: str) -> RefScore | None:
        row = self._db.execute("SELECT data FROM scores WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        (n,) = struct.unpack_from("<q", row[0])
        arr = np.frombuffer(row[0], dtype=np.float32, offset=8).reshape(3, n).astype(np.float64)
        return RefScore(arr[0], arr[1], arr[2])

    def put(self, key: str, score: RefScore) -> None:
        arr = np.stack([score.raw_logprob, score.processed_logprob, score.entropy]).astype(np.float32)
        blob = struct.pack("<q", arr.shape[1]) + arr.tobytes()
        self._db.execute("INSERT OR REPLACE INTO scores VALUES (?, ?)", (key, blob))

    def commit(self) -> None:
        self._db.commit()

    def close(self) -> None:
        self._db.commit()
        self._db.close()


class Reference:
    """HF transformers model used as the trainer: teacher-forced scoring, batched with padding.

    Args:
        model_path: checkpoint directory (the same weights the engines load).
        head_dtype: "float32" (logits from an fp32 lm_head, as RL trainers do) or "model"
            (lm_head in the checkpoint's dtype, logits cast to fp32 afterwards, as vLLM does).
        model_fp: fingerprint of the weights, for the score cache (None disables caching).
        max_batch_tokens: padded tokens per forward pass.
    """

    def __init__(self, model_path: str | Path, head_dtype: str = "float32",
                 model_fp: str | None = None, max_batch_tokens: int = 8192,
                 cache: ScoreCache | None = None):
        if head_dtype not in HEAD_DTYPES:
            raise ValueError(f"head_dtype must be one of {HEAD_DTYPES}, got {head_dtype!r}")
        self.model_path = str(model_path)
        self.head_dtype = head_dtype
        self.model_fp = model_fp
        self.max_batch_tokens = max_batch_tokens
        self.cache = cache if model_fp else None
        self._model = None
        self.stats = {"scored_seqs": 0, "cached_seqs": 0, "forward_s": 0.0, "load_s": 0.0}

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM

            t0 = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype="auto")
            model.eval()
            head = model.get_output_embeddings().weight.detach()
            self._head = head.float() if self.head_dtype == "float32" else head
            self._model = model
            self.stats["load_s"] += time.perf_counter() - t0
        return self._model

    def score(self, pairs: list[tuple[list[int], list[int]]], sampling: SamplingSpec,
              ) -> list[RefScore]:
        """Score completions: pairs of (prompt_token_ids, completion_token_ids)."""
        results: list[RefScore | None] = [None] * len(pairs)
        keys: list[str | None] = [None] * len(pairs)
        todo = []
        for i, (prompt, tokens) in enumerate(pairs):
            if not tokens:
                results[i] = RefScore(np.zeros(0), np.zeros(0), np.zeros(0))
                continue
            if self.cache is not None:
                keys[i] = self.cache.key(self.model_fp, self.head_dtype, sampling, prompt, tokens)
                hit = self.cache.get(keys[i])
                if hit is not None:
                    results[i] = hit
                    self.stats["cached_seqs"] += 1
                    continue
            todo.append(i)
        # Longest first, so batches hold sequences of similar length (little padding).
        todo.sort(key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        batch: list[int] = []
        for i in todo:
            length = len(pairs[i][0]) + len(pairs[i][1])
            longest = max([length] + [len(pairs[j][0]) + len(pairs[j][1]) for j in batch])
            if batch and longest * (len(batch) + 1) > self.max_batch_tokens:
                self._score_batch(pairs, batch, sampling, results)
                batch = []
            batch.append(i)
        if batch:
            self._score_batch(pairs, batch, sampling, results)
        if self.cache is not None:
            for i in todo:
                self.cache.put(keys[i], results[i])
            self.cache.commit()
        return results  # type: ignore[return-value]

    def _score_batch(self, pairs, batch, sampling, results) -> None:
        import torch

        with torch.inference_mode():
            self._score_batch_no_grad(pairs, batch, sampling, results)

    def _score_batch_no_grad(self, pairs, batch, sampling, results) -> None:
        import torch

        model = self._load()
        t0 = time.perf_counter()
        seqs = [list(pairs[i][0]) + list(pairs[i][1]) for i in batch]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        # Hidden state at position t predicts token t+1: gather the positions before each
        # completion token, then apply the head only there.
        rows, cols, targets = [], [], []
        for row, i in enumerate(batch):
            n_prompt, n_comp = len(pairs[i][0]), len(pairs[i][1])
            rows += [row] * n_comp
            cols += list(range(n_prompt - 1, n_prompt + n_comp - 1))
            targets += list(pairs[i][1])
        h = hidden[torch.tensor(rows), torch.tensor(cols)]
        if self.head_dtype == "float32":
            logits = h.float() @ self._head.T
        else:
            logits = (h @ self._head.T).float()
        target = torch.tensor(targets).unsqueeze(-1)
        raw = logits.log_softmax(dim=-1)
        processed = process_logits(logits, sampling).log_softmax(dim=-1)
        raw_lp = raw.gather(-1, target).squeeze(-1).double().numpy()
        proc_lp = processed.gather(-1, target).squeeze(-1).double().numpy()
        ent = _entropy(processed).double().numpy()
        start = 0
        for i in batch:
            n = len(pairs[i][1])
            results[i] = RefScore(raw_lp[start:start + n], proc_lp[start:start + n],
                                  ent[start:start + n])
            start += n
        self.stats["scored_seqs"] += len(batch)
        self.stats["forward_s"] += time.perf_counter() - t0

    def close(self) -> None:
        self._model = None
