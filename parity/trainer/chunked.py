"""Where and in what memory the trainer-side reference scores: the device ("auto", "cpu",
"cuda[:N]"), the bytes one chunk of positions x vocabulary may take there, and the scores of
final hidden states computed a chunk of positions at a time (`score_rows`), whatever the chunk."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from parity.engines.base import SamplingSpec
from parity.trainer.heads import ReferenceError
from parity.trainer.sampler import (
    _entropy,
    boundary_ties,
    cut_distances,
    process_logits,
    tempered_and_kept,
)

# [positions x vocab] buffers alive at once while one chunk is scored, in fp32 units: logits,
# processed logits, the sort's values and int64 indices (2), softmax, cumsum, the mask, the
# log-softmax, and the entropy's p and p * logp.
LIVE_BUFFERS = 10
TILE_ROWS = {"cpu": 64, "cuda": 256}  # head GEMM rows per call (see heads.head_logits `tile`)
CPU_CHUNK_BYTES = 1 << 30  # at most this much for one chunk's buffers on a CPU host
MEMORY_SHARE = 0.25  # and at most this share of the memory available after the model loaded


def resolve_device(spec: str | None = "auto") -> str:
    """ "auto" -> "cuda" where torch sees a CUDA device, else "cpu"; "cpu", "cuda", "cuda:N" as
    given when usable. ReferenceError (naming the fix) for a device this machine does not have."""
    import torch  # lazy: torch takes seconds to import

    spec = (spec or "auto").strip()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return spec
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if m is None:
        raise ReferenceError(f'reference device {spec!r}: use "auto", "cpu", "cuda" or "cuda:N"')
    if not torch.cuda.is_available():
        raise ReferenceError(
            f"reference device {spec!r}: torch {torch.__version__} sees no CUDA "
            'device on this machine; use "auto" (CUDA where there is one) or '
            '"cpu"'
        )
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise ReferenceError(
            f"reference device {spec!r}: this machine has "
            f"{torch.cuda.device_count()} CUDA device(s), numbered from 0"
        )
    return spec


def available_bytes(device: str) -> int:
    """Memory free for scoring on `device`: CUDA's free memory, or on a CPU host the smaller of
    MemAvailable and what the cgroup (container) limit leaves."""
    import torch  # lazy: torch takes seconds to import

    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    free = []
    try:
        with open("/proc/meminfo") as f:
            free += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        free.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, min(free))


def chunk_budget(device: str) -> int:
    """Bytes one chunk's buffers may take: a share of the free memory (capped at 1 GiB on CPU
    hosts, where the engines and the harness share RAM), or $PARITY_REFERENCE_CHUNK_MB. A bf16
    head larger than this is not copied to fp32 but cast block by block on every chunk (less
    memory, more time)."""
    override = os.environ.get("PARITY_REFERENCE_CHUNK_MB")
    if override:
        return int(float(override) * 2**20)
    budget = int(available_bytes(device) * MEMORY_SHARE)
    return budget if device.startswith("cuda") else min(budget, CPU_CHUNK_BYTES)


def chunk_rows(vocab: int, budget: int) -> int:
    """Positions per chunk so that LIVE_BUFFERS fp32 [rows x vocab] buffers fit `budget`."""
    return max(1, budget // (vocab * 4 * LIVE_BUFFERS))


class Rows(NamedTuple):
    """score_rows's result, one float64 (tied: bool) entry per position."""

    raw: np.ndarray  # log_softmax(logits) of the target
    processed: np.ndarray  # its logprob after temperature, top-k, top-p (-inf: cut)
    entropy: np.ndarray  # the processed distribution's exact entropy
    tied: np.ndarray  # the target is tied at the top-k/top-p cut (sampler.boundary_ties)
    tempered: np.ndarray  # log_softmax(logits / T) of the target, full vocabulary
    log_kept_mass: np.ndarray  # log of the tempered mass top-k/top-p keep (0: nothing cut)
    cut_rank: np.ndarray  # 0: kept; k: the k-th token past the top-k/top-p cut (cut_ranks)
    cut_distance: np.ndarray  # 0: kept; else the logit-error spread that could keep it


def score_rows(
    head,
    hidden,
    targets,
    sampling: SamplingSpec,
    tie_rule: str = "keep_ties",
    rows: int | None = None,
) -> Rows:
    """Raw, processed and tempered logprob of each target token, the processed distribution's
    entropy, the boundary-tie flag, the log kept mass and where past the cut it sits (Rows), from final hidden states
    [N, H] and targets [N], `rows` positions at a time (None: all at once). Each chunk runs the
    same ops on its rows as the whole would, so the result does not depend on `rows`; memory is
    ~LIVE_BUFFERS x rows x vocab x 4 bytes."""
    n = int(hidden.shape[0])
    out = np.empty((7, n), dtype=np.float64)
    tied = np.empty(n, dtype=bool)
    for a, b, m, logits, target in _chunks(head, hidden, targets, rows):
        out[0, a:b] = _cpu(logits.log_softmax(dim=-1).gather(-1, target).squeeze(-1)[:m])
        processed = process_logits(logits, sampling, tie_rule)
        tied[a:b] = _cpu(boundary_ties(logits, sampling, target.squeeze(-1), processed)[:m])
        out[6, a:b] = _cpu(cut_distances(logits, sampling, target, processed)[:m])
        tempered, kept = tempered_and_kept(logits, processed, sampling)
        del logits
        out[3, a:b] = _cpu(tempered.gather(-1, target).squeeze(-1)[:m])
        out[4, a:b] = _cpu(kept[:m])
        out[5, a:b] = _cpu(cut_ranks(tempered, processed, target)[:m])
        del tempered
        processed = processed.log_softmax(dim=-1)
        out[1, a:b] = _cpu(processed.gather(-1, target).squeeze(-1)[:m])
        out[2, a:b] = _cpu(_entropy(processed)[:m])
        del processed
    return Rows(out[0], out[1], out[2], tied, out[3], out[4], out[5], out[6])


def processed_rows(
    head,
    hidden,
    targets,
    sampling: SamplingSpec,
    tie_rule: str = "keep_ties",
    rows: int | None = None,
) -> np.ndarray:
    """score_rows's `processed` alone (the same ops on the same chunks, so equal to it bit for
    bit), without the raw, tempered, entropy, tie and cut-rank passes over the vocabulary: for
    a caller that reads nothing else (the weight-update trainer, parity.trainer.split_batches)."""
    out = np.empty(int(hidden.shape[0]), dtype=np.float64)
    for a, b, m, logits, target in _chunks(head, hidden, targets, rows):
        processed = process_logits(logits, sampling, tie_rule).log_softmax(dim=-1)
        del logits
        out[a:b] = _cpu(processed.gather(-1, target).squeeze(-1)[:m])
        del processed
    return out


def _chunks(head, hidden, targets, rows: int | None):
    """(a, b, m, logits, target) per chunk of positions [a, b): the head's fp32 logits of the
    chunk padded to whole tiles of the head (m = b - a real rows first) and the targets [rows,
    1]; `rows` positions at a time (None: all at once), rounded up to whole tiles, so a row's
    tile does not depend on `rows`."""
    import torch  # lazy: torch takes seconds to import

    n = int(hidden.shape[0])
    rows = n if not rows else max(1, int(rows))
    tile = getattr(head, "tile", None)
    if tile:
        rows = -(-rows // tile) * tile
    for a in range(0, n, rows):
        b = min(n, a + rows)
        h, target = hidden[a:b], targets[a:b].unsqueeze(-1)
        if tile and (b - a) % tile:
            # Pad to whole tiles: the row reductions then always run over >= `tile` rows,
            # where their per-row summation order does not depend on the row count (over very
            # few rows torch splits each row between threads, which rounds differently).
            pad = tile - (b - a) % tile
            h = torch.cat([h, h.new_zeros((pad, h.shape[1]))])
            target = torch.cat([target, target.new_zeros((pad, 1))])
        yield a, b, b - a, head(h), target


def cut_ranks(tempered, processed, target):
    """[N] where each target sits past the top-k/top-p cut: 0 where the processed distribution
    keeps it, else 1 + the number of cut tokens with a higher tempered logit (1: the first token
    past the cut, or tied with it). `tempered`: logits / T up to a per-row constant (its
    log_softmax); `processed`: process_logits's output [N, V]; `target` [N, 1]."""
    import torch  # lazy: torch takes seconds to import

    kept = torch.isfinite(processed)
    at = tempered.gather(-1, target)
    above = (~kept & (tempered > at)).sum(dim=-1) + 1
    return torch.where(kept.gather(-1, target).squeeze(-1), torch.zeros_like(above), above)


def _cpu(t) -> np.ndarray:
    t = t.detach().cpu()
    return t.double().numpy() if t.dtype.is_floating_point else t.numpy()
