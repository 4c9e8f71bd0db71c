"""Batch mismatch metrics over sequences of sampled-token logprobs, r = ref - cand (the formulas
of formulas.py): per-sequence token means (the unit the verdict tests resample), the batch
summary with its masked-token counts, and the excluded-token rate. Pure numpy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from parity.verdicts.formulas import (
    GSPO_CLIP,
    ClipRange,
    abs_dlogp,
    abs_dprob,
    ess_normalized,
    kl_k1,
    kl_k2,
    kl_k3,
    log_ratio,
    ref_excluded,
    token_clipped,
)

__all__ = [
    "ABSURD_LOGPROB",
    "both_probabilities",
    "excluded_rates",
    "is_absurd",
    "numerics_rates",
    "per_sequence",
    "summarize",
]

# The log of the smallest positive fp32 (and bf16) number, 2^-149: -103.28. No probability an
# fp32 or bf16 softmax holds is smaller; a finite logprob below it is not a probability but a
# mask's fill value standing for -inf (-1e4, -1e9, torch.finfo(...).min, fp16's -65504), and a
# token the engine sampled never has one (e^-103 per draw). Such tokens are masked like -inf
# ones and counted apart (n_ref_absurd, n_cand_absurd); docs/methodology.md#vanishing-tokens.
ABSURD_LOGPROB = -149 * math.log(2)

# Per-token metrics that summarize() reports both as a token mean and as a sequence mean.
_TOKEN_METRICS = ("abs_dlogp", "abs_dprob", "kl_k1", "kl_k2", "kl_k3")


def excluded_rates(
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    boundary_tie: list[np.ndarray] | None = None,
    numerics: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, int]:
    """The excluded-token rate: per sequence, the share of its tokens in `ref_excluded`, those
    tied with the lowest kept logit at the top-k/top-p cut (boundary_tie True: the platform's
    tie rule) not counted, nor those `numerics` marks (within the numerics margin of the cut:
    numerics_rates counts them); NaN for an empty sequence. Without boundary_tie and numerics
    every token counts (per_sequence's ref_excluded_rate). Returns (rates, number of tied
    tokens left out).

    Raises:
        ValueError: when cand, boundary_tie or numerics differ from ref in sequence count or
            lengths.
    """
    excluded, tied, near, seq, lengths = _excluded(ref, cand, boundary_tie, numerics)
    counts = np.bincount(seq[excluded & ~tied & ~near], minlength=lengths.size)
    return _share(counts, lengths), int(tied.sum())


def numerics_rates(
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    numerics: list[np.ndarray],
    boundary_tie: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, int]:
    """The share per sequence of its tokens in `ref_excluded` that `numerics` marks (past the
    cut by no more than the numerics margin) and that are not tied at the cut; NaN for an
    empty sequence. Returns (rates, their number). Raises ValueError as excluded_rates."""
    excluded, tied, near, seq, lengths = _excluded(ref, cand, boundary_tie, numerics)
    picked = excluded & ~tied & near
    return _share(np.bincount(seq[picked], minlength=lengths.size), lengths), int(picked.sum())


def _excluded(ref, cand, boundary_tie, numerics):
    """(ref_excluded, tied & excluded, numerics, sequence index, lengths), flat per token."""
    lengths = np.array([np.size(a) for a in ref], dtype=np.int64)
    for name, other in (("cand", cand), ("boundary_tie", boundary_tie), ("numerics", numerics)):
        if other is not None and [np.size(a) for a in other] != lengths.tolist():
            raise ValueError(f"{name} and ref differ in sequence count or lengths")
    excluded = ref_excluded(_concat(ref), _concat(cand))
    tied = np.zeros_like(excluded) if boundary_tie is None else _concat(boundary_tie, bool)
    near = np.zeros_like(excluded) if numerics is None else _concat(numerics, bool)
    seq = np.repeat(np.arange(lengths.size), lengths)
    return excluded, tied & excluded, near, seq, lengths


def _concat(arrays: list[np.ndarray], dtype: type = np.float64) -> np.ndarray:
    return (
        np.concatenate([np.asarray(a, dtype=dtype) for a in arrays])
        if arrays
        else np.zeros(0, dtype)
    )


def _share(counts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """counts / lengths per sequence, NaN for an empty sequence."""
    out = np.full(lengths.size, np.nan)
    np.divide(counts, lengths, out=out, where=lengths > 0)
    return out


# --- batch summaries ---


@dataclass(frozen=True)
class _Flat:
    """All tokens concatenated; `seq` is each token's sequence index; `valid` excludes masked.

    `ref_excluded`: ref == -inf while cand is finite (the engine sampled a token the trainer's
    processed distribution excludes). `cand_excluded`: cand == -inf (the engine gives its own
    sampled token probability 0). `ref_absurd` / `cand_absurd`: finite but below
    ABSURD_LOGPROB (a mask's fill value). valid == ~(ref_excluded | cand_excluded | absurd).
    ref, cand and ref_entropy hold the valid tokens only (every metric is computed on those,
    once, rather than on all tokens and then masked per metric).
    """

    ref: np.ndarray  # valid tokens only
    cand: np.ndarray  # valid tokens only
    ref_entropy: np.ndarray | None  # valid tokens only
    seq: np.ndarray
    lengths: np.ndarray
    valid: np.ndarray
    ref_excluded: np.ndarray
    cand_excluded: np.ndarray
    ref_absurd: np.ndarray
    cand_absurd: np.ndarray
    valid_seq: np.ndarray  # seq[valid], reused by every per-sequence mean
    valid_counts: np.ndarray  # valid tokens per sequence


def _flatten(
    ref: list[np.ndarray], cand: list[np.ndarray], ref_entropy: list[np.ndarray] | None
) -> _Flat:
    """Validate shapes and values, then concatenate the sequences."""
    if len(ref) != len(cand):
        raise ValueError(f"ref has {len(ref)} sequences, cand has {len(cand)}")
    if ref_entropy is not None and len(ref_entropy) != len(ref):
        raise ValueError(f"ref_entropy has {len(ref_entropy)} sequences, ref has {len(ref)}")
    refs = [np.asarray(a, dtype=np.float64) for a in ref]
    cands = [np.asarray(a, dtype=np.float64) for a in cand]
    ents = None if ref_entropy is None else [np.asarray(a, dtype=np.float64) for a in ref_entropy]
    for i, (a, b) in enumerate(zip(refs, cands)):
        if a.ndim != 1 or a.shape != b.shape:
            raise ValueError(
                f"sequence {i}: ref {a.shape} and cand {b.shape} must be equal 1-D shapes"
            )
        if ents is not None and ents[i].shape != a.shape:
            raise ValueError(
                f"sequence {i}: ref_entropy shape {ents[i].shape} != ref shape {a.shape}"
            )
    lengths = np.array([a.size for a in refs], dtype=np.int64)
    flat_ref = np.concatenate(refs) if refs else np.zeros(0)
    flat_cand = np.concatenate(cands) if cands else np.zeros(0)
    flat_ent = None if ents is None else (np.concatenate(ents) if ents else np.zeros(0))
    # -inf is a legitimate "masked" logprob; NaN or +inf is an upstream bug, so fail loudly.
    for name, arr in (("ref", flat_ref), ("cand", flat_cand)):
        top = arr.max() if arr.size else 0.0  # NaN propagates: one pass finds NaN and +inf
        if np.isnan(top) or np.isposinf(top):
            bad = np.isnan(arr) | np.isposinf(arr)
            raise ValueError(f"{name} logprobs contain {int(bad.sum())} NaN/+inf values")
    if flat_ent is not None and not np.isfinite(flat_ent).all():
        raise ValueError("ref_entropy contains non-finite values")
    seq = np.repeat(np.arange(len(refs)), lengths)
    cand_excluded = np.isneginf(flat_cand)
    ref_excl = ref_excluded(flat_ref, flat_cand)
    ref_absurd, cand_absurd = is_absurd(flat_ref), is_absurd(flat_cand)
    valid = ~(ref_excl | cand_excluded | ref_absurd | cand_absurd)
    if not valid.all():  # the usual case skips the copies that boolean indexing makes
        flat_ref, flat_cand, seq_v = flat_ref[valid], flat_cand[valid], seq[valid]
        flat_ent = None if flat_ent is None else flat_ent[valid]
    else:
        seq_v = seq
    valid_counts = np.bincount(seq_v, minlength=lengths.size)
    return _Flat(
        flat_ref,
        flat_cand,
        flat_ent,
        seq,
        lengths,
        valid,
        ref_excl,
        cand_excluded,
        ref_absurd,
        cand_absurd,
        seq_v,
        valid_counts,
    )


def is_absurd(x: np.ndarray) -> np.ndarray:
    """Finite logprobs below ABSURD_LOGPROB (a mask's fill value, not a probability)."""
    return np.isfinite(x) & (x < ABSURD_LOGPROB)


def both_probabilities(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Where both sides hold a probability's logprob: finite and not a fill value (is_absurd)."""
    return np.isfinite(ref + cand) & (ref >= ABSURD_LOGPROB) & (cand >= ABSURD_LOGPROB)


def _seq_means(values: np.ndarray, flat: _Flat) -> np.ndarray:
    """Per-sequence mean of a per-valid-token array; NaN for sequences with no valid token."""
    sums = np.bincount(flat.valid_seq, weights=values, minlength=flat.lengths.size)
    out = np.full(flat.lengths.size, np.nan)
    np.divide(sums, flat.valid_counts, out=out, where=flat.valid_counts > 0)
    return out


def _seq_counts(mask: np.ndarray, flat: _Flat) -> np.ndarray:
    """Per-sequence number of tokens where `mask` is True."""
    return np.bincount(flat.seq[mask], minlength=flat.lengths.size).astype(np.int64)


def _mean(x: np.ndarray) -> float:
    """Mean ignoring NaN (sequences with no valid token), NaN without a warning if none is left.

    +inf is kept: k3 overflows for huge r, which is a real infinite mismatch, not a missing value.
    """
    nan = np.isnan(x)
    if nan.any():  # per-token values never are: skip the copy
        x = x[~nan]
    return float(np.mean(x)) if x.size else float("nan")


def _token_values(flat: _Flat, clip: ClipRange) -> dict[str, np.ndarray]:
    """Every per-token metric over the valid tokens, once for per_sequence and summarize."""
    with np.errstate(invalid="ignore", over="ignore"):
        return {
            "r": log_ratio(flat.ref, flat.cand),
            "abs_dlogp": abs_dlogp(flat.ref, flat.cand),
            "abs_dprob": abs_dprob(flat.ref, flat.cand),
            "kl_k1": kl_k1(flat.ref, flat.cand),
            "kl_k2": kl_k2(flat.ref, flat.cand),
            "kl_k3": kl_k3(flat.ref, flat.cand),
            "clipped": token_clipped(flat.ref, flat.cand, clip).astype(np.float64),
        }


def per_sequence(
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    ref_entropy: list[np.ndarray] | None = None,
    clip: ClipRange = ClipRange(),
    *,
    seq_clip: ClipRange = GSPO_CLIP,
) -> dict[str, np.ndarray]:
    """Per-sequence token means, the unit the verdict statistics resample.

    For sequence s with valid (unmasked) tokens T_s: metric_s = mean_{t in T_s} metric_t.
    A sequence with no valid token gets NaN (the statistics drop non-finite values).

    Args:
        ref: per sequence, reference logprobs of the sampled tokens (1-D each).
        cand: per sequence, candidate logprobs of the same tokens.
        ref_entropy: per sequence, the reference's exact entropy at each position, or None.
        clip: the PPO token trust region (default DAPO's 0.2/0.28), for clip_rate_token.
        seq_clip: the sequence trust region on exp(mean_t r), for clipped_seq; default
            GSPO_CLIP, eps_low=3e-4 / eps_high=4e-4 (Zheng et al. 2025, GSPO).

    Returns:
        Arrays of length n_seqs: n_tokens, n_masked_tokens, n_ref_excluded (ref == -inf, cand
        finite: sampled by the engine, excluded by the reference), ref_excluded_rate
        (n_ref_excluded / n_tokens, NaN for an empty sequence), n_cand_excluded (cand == -inf),
        abs_dlogp_mean, abs_dprob_mean, kl_k1_mean, kl_k2_mean, kl_k3_mean, clip_rate_token
        (fraction of clipped tokens), clipped_seq (GSPO indicator as 0/1), entropy_cand_mc
        (-mean cand), and entropy_ref_mean if ref_entropy is given.

    Raises:
        ValueError: on mismatched shapes, NaN or +inf logprobs, or non-finite entropy.
    """
    flat = _flatten(ref, cand, ref_entropy)
    return _per_sequence(flat, _token_values(flat, clip), seq_clip)


def _per_sequence(
    flat: _Flat, tok: dict[str, np.ndarray], seq_clip: ClipRange
) -> dict[str, np.ndarray]:
    """per_sequence on already-flattened input and per-token values."""
    n_ref_excl = _seq_counts(flat.ref_excluded, flat)
    out: dict[str, np.ndarray] = {
        "n_tokens": flat.lengths.astype(np.int64),
        "n_masked_tokens": flat.lengths - flat.valid_counts,
        "n_ref_excluded": n_ref_excl,
        "ref_excluded_rate": _share(n_ref_excl, flat.lengths),
        "n_cand_excluded": _seq_counts(flat.cand_excluded, flat),
    }
    for name in _TOKEN_METRICS:
        out[f"{name}_mean"] = _seq_means(tok[name], flat)
    out["clip_rate_token"] = _seq_means(tok["clipped"], flat)
    r_mean = _seq_means(tok["r"], flat)
    with np.errstate(invalid="ignore"):  # NaN r_mean (no valid token) compares False
        gspo = ((r_mean < seq_clip.log_low) | (r_mean > seq_clip.log_high)).astype(np.float64)
    out["clipped_seq"] = np.where(np.isnan(r_mean), np.nan, gspo)
    out["entropy_cand_mc"] = _seq_means(-flat.cand, flat)
    if flat.ref_entropy is not None:
        out["entropy_ref_mean"] = _seq_means(flat.ref_entropy, flat)
    return out


def summarize(
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    ref_entropy: list[np.ndarray] | None = None,
    clip: ClipRange = ClipRange(),
    *,
    seq_clip: ClipRange = GSPO_CLIP,
) -> dict[str, float]:
    """Batch mismatch metrics: token means, sequence means, tails, clip rates, ESS, entropy.

    Token mean: mean over all valid tokens of the batch (long sequences weigh more).
    Sequence mean (`_seqmean`): mean over sequences of the per-sequence token mean.
    Masked tokens (ref or cand == -inf) are counted and excluded from every other metric (a
    mean over infinite ratios says nothing); sequences with no valid token are excluded from
    sequence means and clip_rate_seq. With no valid token at all, every metric is NaN (never 0).
    The masked tokens split into two disjoint counts that say what went wrong:
    n_ref_excluded (ref == -inf, cand finite): the engine sampled a token the trainer's processed
    distribution excludes (top-k/top-p support disagreement), the strongest possible mismatch;
    n_cand_excluded (cand == -inf, whatever ref is): the engine reports probability 0 for its own
    sampled token, an engine bug; n_ref_absurd / n_cand_absurd (present only when non-zero, with
    ref_absurd_min / cand_absurd_min): finite logprobs below ABSURD_LOGPROB, a mask's fill value
    rather than a probability. n_masked_tokens counts every one of these tokens once.

    Args:
        ref: per sequence, reference logprobs of the sampled tokens (1-D each).
        cand: per sequence, candidate logprobs of the same tokens.
        ref_entropy: per sequence, the reference's exact entropy at each position, or None.
        clip: the PPO token trust region (default DAPO's 0.2/0.28), for clip_rate_token.
        seq_clip: the sequence trust region on exp(mean_t r), for clip_rate_seq; default
            GSPO_CLIP, eps_low=3e-4 / eps_high=4e-4 (Zheng et al. 2025, GSPO).

    Returns:
        n_seqs, n_tokens (all, masked included), n_masked_tokens, masked_token_rate,
        n_ref_excluded, ref_excluded_rate (over all tokens), n_cand_excluded,
        abs_dlogp_mean/_p50/_p99/_max, abs_dprob_mean, kl_k1/k2/k3_mean, clip_rate_token,
        clip_rate_seq (GSPO), ess_norm (token weights exp(r)), entropy_cand_mc (-mean cand),
        entropy_ref_mean (only if ref_entropy is given), and `<name>_seqmean` for abs_dlogp,
        abs_dprob, kl_k1, kl_k2, kl_k3, clip_rate_token, entropy_cand_mc, entropy_ref.

    Raises:
        ValueError: on mismatched shapes, NaN or +inf logprobs, or non-finite entropy.
    """
    flat = _flatten(ref, cand, ref_entropy)
    tok = _token_values(flat, clip)
    seqs = _per_sequence(flat, tok, seq_clip)
    n_tokens = int(flat.lengths.sum())
    n_masked = int(n_tokens - flat.valid_counts.sum())
    n_ref_excl = int(flat.ref_excluded.sum())

    def rate(n: int) -> float:
        return n / n_tokens if n_tokens else float("nan")

    out: dict[str, float] = {
        "n_seqs": len(ref),
        "n_tokens": n_tokens,
        "n_masked_tokens": n_masked,
        "masked_token_rate": rate(n_masked),
        "n_ref_excluded": n_ref_excl,
        "ref_excluded_rate": rate(n_ref_excl),
        "n_cand_excluded": int(flat.cand_excluded.sum()),
    }
    for side in ("ref", "cand"):
        mask = getattr(flat, f"{side}_absurd")
        if mask.any():  # the usual case adds no key: a clean batch's summary is unchanged
            values = _concat(cand if side == "cand" else ref)
            out[f"n_{side}_absurd"] = int(mask.sum())
            out[f"{side}_absurd_min"] = float(values[mask].min())
    valid = tok
    adl = valid["abs_dlogp"]
    out["abs_dlogp_mean"] = _mean(adl)
    quantiles = np.percentile(adl, (50, 99)) if adl.size else (float("nan"),) * 2
    for q, v in zip((50, 99), quantiles):  # one partition for both
        out[f"abs_dlogp_p{q}"] = float(v)
    out["abs_dlogp_max"] = float(np.max(adl)) if adl.size else float("nan")
    for name in _TOKEN_METRICS[1:]:
        out[f"{name}_mean"] = _mean(valid[name])
    out["clip_rate_token"] = _mean(valid["clipped"])
    out["clip_rate_seq"] = _mean(seqs["clipped_seq"])
    out["ess_norm"] = ess_normalized(valid["r"])
    out["entropy_cand_mc"] = _mean(-flat.cand)
    if flat.ref_entropy is not None:
        out["entropy_ref_mean"] = _mean(flat.ref_entropy)
    for name in _TOKEN_METRICS:
        out[f"{name}_seqmean"] = _mean(seqs[f"{name}_mean"])
    out["clip_rate_token_seqmean"] = _mean(seqs["clip_rate_token"])
    out["entropy_cand_mc_seqmean"] = _mean(seqs["entropy_cand_mc"])
    if flat.ref_entropy is not None:
        out["entropy_ref_seqmean"] = _mean(seqs["entropy_ref_mean"])
    return out
