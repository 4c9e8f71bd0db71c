"""The trainer-side reference: HF transformers scores (prompt, completion) sequences by teacher
forcing (raw and processed logprobs, the processed distribution's exact entropy), lm_head in fp32
or the model dtype, a chunk at a time (chunked.py); RefScore, and ScoreCache for scores on disk."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parity.engines.base import SamplingSpec
from parity.setup.paths import cache_dir
from parity.trainer.chunked import TILE_ROWS, chunk_budget, chunk_rows, resolve_device, score_rows
from parity.trainer.heads import HEAD_DTYPES, Head, model_head
from parity.trainer.loading import load_causal_lm
from parity.trainer.sampler import TIE_RULES

# Bump when the scoring semantics change, so cached scores from older code are not reused.
# 2: logits as the model computes them (bias, scale, softcap); tie rule in the key.
# 6: the device type (cpu, cuda) in the key: its numerics differ; head GEMMs in fixed tiles.
# 7: the tempered logprob and the log kept mass stored with every score.
# 8: the cut rank (where an excluded token sits past the top-k/top-p cut) stored too.
# 9: the cut distance (the logit-error spread that could keep an excluded token) stored too.
SCORER_VERSION = 9


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
    tempered_logprob: log_softmax(logits / T) over the full vocabulary (what verl, TRL,
        OpenRLHF, prime-rl compute); None when not computed (a scores file).
    log_kept_mass: log of the tempered probability mass of the tokens top-k/top-p keep (0
        where nothing is cut): processed = tempered - log_kept_mass for a kept token. None when
        not computed.
    cut_rank: 0 for a token the processed distribution keeps, else 1 + the number of cut tokens
        with a higher logit (1: the first token past the cut, where numerics move it; see
        _common.NUMERICS_RANK). None when not computed.
    cut_distance: 0 for a kept token, else the least spread (max - min, in tempered logits) of
        an error on the logits that could bring it back inside the cut (sampler.cut_distances;
        _common.NUMERICS_SPREAD). None when not computed.
    """

    raw_logprob: np.ndarray
    processed_logprob: np.ndarray
    entropy: np.ndarray
    boundary_tie: np.ndarray | None = None
    tempered_logprob: np.ndarray | None = None
    log_kept_mass: np.ndarray | None = None
    cut_rank: np.ndarray | None = None
    cut_distance: np.ndarray | None = None


class ScoreCache:
    """Reference scores on disk, keyed by everything they depend on (weights, head dtype, tie
    rule, sampling params, prompt and completion tokens), shared across runs and bisect trials."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_dir() / "refscores.sqlite"
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, data BLOB)")

    @staticmethod
    def key(
        model_fp: str,
        head_dtype: str,
        sampling: SamplingSpec,
        prompt: list[int],
        tokens: list[int],
        tie_rule: str = "keep_ties",
        device: str = "cpu",
    ) -> str:
        h = hashlib.sha256()
        kind = device.split(":")[0]
        h.update(
            f"{SCORER_VERSION}|{model_fp}|{head_dtype}|{tie_rule}|{kind}|"
            f"{sampling.temperature!r}|"
            f"{sampling.top_k}|{sampling.top_p!r}|".encode()
        )
        h.update(np.asarray(prompt, dtype=np.int64).tobytes() + b"|")
        h.update(np.asarray(tokens, dtype=np.int64).tobytes())
        return h.hexdigest()

    def get(self, key: str) -> RefScore | None:
        row = self._db.execute("SELECT data FROM scores WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        (n,) = struct.unpack_from("<q", row[0])
        arr = np.frombuffer(row[0], dtype=np.float32, offset=8).reshape(-1, n).astype(np.float64)
        # Rows 3..7 (boundary tie, tempered, log kept mass, cut rank, cut distance) hold NaN
        # where not computed.
        tie, tempered, kept, gap, dist = (None if np.isnan(a).all() else a for a in arr[3:8])
        tie = None if tie is None else tie > 0
        return RefScore(arr[0], arr[1], arr[2], tie, tempered, kept, gap, dist)

    def put(self, key: str, score: RefScore) -> None:
        n = np.size(score.raw_logprob)
        optional = (
            score.boundary_tie,
            score.tempered_logprob,
            score.log_kept_mass,
            score.cut_rank,
            score.cut_distance,
        )
        rows = [score.raw_logprob, score.processed_logprob, score.entropy]
        rows += [np.full(n, np.nan) if a is None else a for a in optional]
        arr = np.stack([np.asarray(r, dtype=np.float64) for r in rows]).astype(np.float32)
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
        device: "auto" (CUDA where there is one, else CPU), "cpu", "cuda" or "cuda:N".
        chunk_rows: positions whose [vocab]-wide buffers are alive at once (None: from the memory
            free after the model loaded, see chunk_budget); results do not depend on it.
        tile_rows: rows per head GEMM (default TILE_ROWS of the device); chunks are whole tiles.
    """

    def __init__(
        self,
        model_path: str | Path,
        head_dtype: str = "float32",
        model_fp: str | None = None,
        max_batch_tokens: int = 8192,
        cache: ScoreCache | None = None,
        tie_rule: str = "keep_ties",
        device: str = "auto",
        chunk_rows: int | None = None,
        tile_rows: int | None = None,
    ):
        if head_dtype not in HEAD_DTYPES:
            raise ValueError(f"head_dtype must be one of {HEAD_DTYPES}, got {head_dtype!r}")
        if tie_rule not in TIE_RULES:
            raise ValueError(f"tie_rule must be one of {TIE_RULES}, got {tie_rule!r}")
        self.model_path = str(model_path)
        self.head_dtype = head_dtype
        self.tie_rule = tie_rule
        self.device = resolve_device(device)
        self.model_fp = model_fp
        self.max_batch_tokens = max_batch_tokens
        self.chunk_rows = chunk_rows
        self.tile_rows = tile_rows or TILE_ROWS[self.device.split(":")[0]]
        self.cache = cache if model_fp else None
        self._model = None
        self.head: Head | None = None
        self.stats = {
            "scored_seqs": 0,
            "scored_tokens": 0,
            "cached_seqs": 0,
            "forward_s": 0.0,
            "load_s": 0.0,
            "device": self.device,
        }

    def _load(self):
        if self._model is None:
            import torch  # lazy: torch takes seconds to import

            t0 = time.perf_counter()
            on_cuda = self.device.startswith("cuda")
            model = load_causal_lm(  # refuses a checkpoint whose tensors it would make up
                self.model_path, dtype="auto", **({"device_map": self.device} if on_cuda else {})
            )
            model.eval()
            out = model.get_output_embeddings().weight
            vocab, hidden = out.shape
            budget = chunk_budget(self.device)
            if self.chunk_rows is None:
                self.chunk_rows = chunk_rows(vocab, budget)
            # An fp32 copy of a bf16 head is kept when it fits the chunk budget; a larger one
            # (a 128k-vocabulary 1B model's is 1 GB) is cast block by block on each chunk.
            cast = None
            if (
                self.head_dtype == "float32"
                and out.dtype != torch.float32
                and vocab * hidden * 4 > budget
            ):
                cast = max(256, budget // (4 * hidden * 4))
            self.head = model_head(model, self.head_dtype, cast_block=cast, tile=self.tile_rows)
            self._model = model
            self.stats.update(
                chunk_rows=self.chunk_rows,
                tile_rows=self.tile_rows,
                head_cast_block=cast,
                chunk_budget_mb=round(budget / 2**20),
            )
            self.stats["load_s"] += time.perf_counter() - t0
        return self._model

    def score(
        self,
        pairs: list[tuple[list[int], list[int]]],
        sampling: SamplingSpec,
    ) -> list[RefScore]:
        """Score completions: pairs of (prompt_token_ids, completion_token_ids)."""
        results: list[RefScore | None] = [None] * len(pairs)
        keys: list[str | None] = [None] * len(pairs)
        todo = []
        for i, (prompt, tokens) in enumerate(pairs):
            if not tokens:
                empty = np.zeros(0)
                results[i] = RefScore(empty, empty, empty, np.zeros(0, dtype=bool), empty, empty)
                continue
            if self.cache is not None:
                keys[i] = self.cache.key(
                    self.model_fp,
                    self.head_dtype,
                    sampling,
                    prompt,
                    tokens,
                    self.tie_rule,
                    self.device,
                )
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
        import torch  # lazy: torch takes seconds to import

        with torch.inference_mode():
            self._score_batch_no_grad(pairs, batch, sampling, results)

    def _score_batch_no_grad(self, pairs, batch, sampling, results) -> None:
        import torch  # lazy: torch takes seconds to import

        model = self._load()
        t0 = time.perf_counter()
        seqs = [list(pairs[i][0]) + list(pairs[i][1]) for i in batch]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        hidden = model.base_model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
        ).last_hidden_state
        # Hidden state at position t predicts token t+1: gather the positions before each
        # completion token, then apply the head only there, a chunk of positions at a time.
        rows, cols, targets = [], [], []
        for row, i in enumerate(batch):
            n_prompt, n_comp = len(pairs[i][0]), len(pairs[i][1])
            rows += [row] * n_comp
            cols += list(range(n_prompt - 1, n_prompt + n_comp - 1))
            targets += list(pairs[i][1])
        h = hidden[torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)]
        del hidden
        rows = score_rows(
            self.head,
            h,
            torch.tensor(targets, device=self.device),
            sampling,
            self.tie_rule,
            self.chunk_rows,
        )
        start = 0
        for i in batch:
            n = len(pairs[i][1])
            results[i] = RefScore(*(a[start : start + n] for a in rows))
            start += n
        self.stats["scored_seqs"] += len(batch)
        self.stats["scored_tokens"] += start
        self.stats["forward_s"] += time.perf_counter() - t0

    def close(self) -> None:
        self._model = None
        self.head = None
