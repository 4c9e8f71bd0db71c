"""The trainer-side reference: HF transformers scores (prompt, completion) token sequences by
teacher forcing, giving raw and processed logprobs and the exact entropy of the processed
distribution, with the lm_head in fp32 (as RL trainers compute it) or in the model dtype."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parity.engines.base import SamplingSpec
from parity.heads import (HEAD_DTYPES, Head, HeadSpec, ReferenceError, head_logits,  # noqa: F401
                          head_spec, model_head, verify_head)
from parity.paths import cache_dir

# Bump when the scoring semantics change, so cached scores from older code are not reused.
# 2: logits as the model computes them (bias, scale, softcap); tie rule in the key.
SCORER_VERSION = 5
GREEDY_EPS = 1e-5  # vLLM V1's _SAMPLING_EPS: below this temperature a request is greedy
TIE_RULES = ("keep_ties", "exact_k")


# --- The sampler's transform ---------------------------------------------------------------

@dataclass
class RefScore:
    """Reference scores of one completion, one entry per completion token.

    raw_logprob: log softmax of the logits (no temperature, no truncation).
    processed_logprob: log prob under the distribution the sampler draws from (temperature,
        then top-k, then top-p, in vLLM V1's order and the reference's tie rule); -inf for a
        token that distribution excludes.
    entropy: exact entropy (nats) of that processed distribution at each position.
    boundary_tie: True where the token is one of several tokens with equal logits at the top-k
        or top-p boundary (boundary_ties), so which of them the engine kept is platform-specific.
        None when not computed.
    """

    raw_logprob: np.ndarray
    processed_logprob: np.ndarray
    entropy: np.ndarray
    boundary_tie: np.ndarray | None = None


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
    import torch

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
    import torch

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


def _entropy(logprobs):
    import torch

    p = logprobs.exp()
    return -(torch.where(p > 0, p * logprobs, torch.zeros_like(p))).sum(dim=-1)


class ScoreCache:
    """Reference scores on disk, keyed by everything they depend on (weights, head dtype, tie
    rule, sampling params, prompt and completion tokens), shared across runs and bisect trials."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_dir() / "refscores.sqlite"
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, data BLOB)")

    @staticmethod
    def key(model_fp: str, head_dtype: str, sampling: SamplingSpec, prompt: list[int],
            tokens: list[int], tie_rule: str = "keep_ties") -> str:
        h = hashlib.sha256()
        h.update(f"{SCORER_VERSION}|{model_fp}|{head_dtype}|{tie_rule}|{sampling.temperature!r}|"
                 f"{sampling.top_k}|{sampling.top_p!r}|".encode())
        h.update(np.asarray(prompt, dtype=np.int64).tobytes() + b"|")
        h.update(np.asarray(tokens, dtype=np.int64).tobytes())
        return h.hexdigest()

    def get(self, key: str) -> RefScore | None:
        row = self._db.execute("SELECT data FROM scores WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        (n,) = struct.unpack_from("<q", row[0])
        arr = np.frombuffer(row[0], dtype=np.float32, offset=8).reshape(-1, n).astype(np.float64)
        return RefScore(arr[0], arr[1], arr[2], arr[3] > 0 if len(arr) > 3 else None)

    def put(self, key: str, score: RefScore) -> None:
        rows = [score.raw_logprob, score.processed_logprob, score.entropy]
        if score.boundary_tie is not None:
            rows.append(score.boundary_tie)
        arr = np.stack(rows).astype(np.float32)
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
            Either way the logits are the model's own (lm_head bias, logit scale, final softcap:
            see head_logits); a model whose logits it cannot mirror raises ReferenceError at load.
        model_fp: fingerprint of the weights, for the score cache (None disables caching).
        max_batch_tokens: padded tokens per forward pass.
        tie_rule: top-k/top-p tie rule of the engine's sampler ("keep_ties" or "exact_k", see
            tie_rule_for).
    """

    def __init__(self, model_path: str | Path, head_dtype: str = "float32",
                 model_fp: str | None = None, max_batch_tokens: int = 8192,
                 cache: ScoreCache | None = None, tie_rule: str = "keep_ties"):
        if head_dtype not in HEAD_DTYPES:
            raise ValueError(f"head_dtype must be one of {HEAD_DTYPES}, got {head_dtype!r}")
        if tie_rule not in TIE_RULES:
            raise ValueError(f"tie_rule must be one of {TIE_RULES}, got {tie_rule!r}")
        self.model_path = str(model_path)
        self.head_dtype = head_dtype
        self.tie_rule = tie_rule
        self.model_fp = model_fp
        self.max_batch_tokens = max_batch_tokens
        self.cache = cache if model_fp else None
        self._model = None
        self.head: Head | None = None
        self.stats = {"scored_seqs": 0, "cached_seqs": 0, "forward_s": 0.0, "load_s": 0.0}

    def _load(self):
        if self._model is None:
            from transformers import AutoModelForCausalLM

            t0 = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype="auto")
            model.eval()
            self.head = model_head(model, self.head_dtype)
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
                results[i] = RefScore(np.zeros(0), np.zeros(0), np.zeros(0),
                                      np.zeros(0, dtype=bool))
                continue
            if self.cache is not None:
                keys[i] = self.cache.key(self.model_fp, self.head_dtype, sampling, prompt,
                                          tokens, self.tie_rule)
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
        logits = self.head(h)
        target = torch.tensor(targets).unsqueeze(-1)
        raw = logits.log_softmax(dim=-1)
        processed = process_logits(logits, sampling, self.tie_rule)
        tied = boundary_ties(logits, sampling, target.squeeze(-1), processed).numpy()
        processed = processed.log_softmax(dim=-1)
        raw_lp = raw.gather(-1, target).squeeze(-1).double().numpy()
        proc_lp = processed.gather(-1, target).squeeze(-1).double().numpy()
        ent = _entropy(processed).double().numpy()
        start = 0
        for i in batch:
            n = len(pairs[i][1])
            results[i] = RefScore(raw_lp[start:start + n], proc_lp[start:start + n],
                                  ent[start:start + n], tied[start:start + n])
            start += n
        self.stats["scored_seqs"] += len(batch)
        self.stats["forward_s"] += time.perf_counter() - t0

    def close(self) -> None:
        self._model = None
        self.head = None
