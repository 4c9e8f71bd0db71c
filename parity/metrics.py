"""Mismatch metrics between a trainer-side reference and a rollout engine's sampled-token logprobs.

Pure functions over numpy arrays. Convention throughout: r = ref_logprob - cand_logprob.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ClipRange",
    "abs_dlogp",
    "abs_dprob",
    "ess_normalized",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "log_ratio",
    "masked",
    "per_sequence",
    "sequence_clipped",
    "summarize",
    "token_clipped",
]

# Per-token metrics that summarize() reports both as a token mean and as a sequence mean.
_TOKEN_METRICS = ("abs_dlogp", "abs_dprob", "kl_k1", "kl_k2", "kl_k3")


@dataclass(frozen=True)
class ClipRange:
    """A PPO trust region on the ratio exp(r): [1 - eps_low, 1 + eps_high], both ends inside.

    Defaults are the asymmetric "clip-higher" range (DAPO): eps_low=0.2, eps_high=0.28.
    """

    eps_low: float = 0.2
    eps_high: float = 0.28

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps_low <= 1.0:
            raise ValueError(f"eps_low must be in [0, 1], got {self.eps_low}")
        if not 0.0 <= self.eps_high < np.inf:
            raise ValueError(f"eps_high must be finite and >= 0, got {self.eps_high}")

    @property
    def log_low(self) -> float:
        """log(1 - eps_low): the lower bound on r (-inf when eps_low == 1)."""
        with np.errstate(divide="ignore"):
            return float(np.log(1.0 - self.eps_low))

    @property
    def log_high(self) -> float:
        """log(1 + eps_high): the upper bound on r."""
        return float(np.log(1.0 + self.eps_high))


# --- per-token formulas (IEEE semantics: no masking here; summarize/per_sequence mask) ---


def log_ratio(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Log importance ratio r = ref - cand (reference over candidate).

    Args:
        ref: reference (trainer) logprobs of the sampled tokens.
        cand: candidate (rollout engine) logprobs of the same tokens.

    Returns:
        r, same shape as the inputs.
    """
    return np.asarray(ref, dtype=np.float64) - np.asarray(cand, dtype=np.float64)


def abs_dlogp(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Absolute logprob difference |r| = |ref - cand|.

    Args:
        ref: reference logprobs.
        cand: candidate logprobs.

    Returns:
        |r| per token.
    """
    return np.abs(log_ratio(ref, cand))


def abs_dprob(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Absolute probability difference |exp(ref) - exp(cand)|, in [0, 1].

    Args:
        ref: reference logprobs.
        cand: candidate logprobs.

    Returns:
        |dp| per token.
    """
    return np.abs(np.exp(np.asarray(ref, dtype=np.float64)) - np.exp(np.asarray(cand, dtype=np.float64)))


def kl_k1(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """k1 estimator of KL(cand || ref) on tokens sampled from cand: k1 = -r = cand - ref.

    Unbiased but signed and high-variance (Schulman, "Approximating KL divergence", 2020).

    Args:
        ref: reference logprobs.
        cand: candidate logprobs (the sampling distribution).

    Returns:
        k1 per token.
    """
    return -log_ratio(ref, cand)


def kl_k2(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """k2 estimator of KL(cand || ref): k2 = r^2 / 2 (>= 0, biased, low variance).

    Args:
        ref: reference logprobs.
        cand: candidate logprobs (the sampling distribution).

    Returns:
        k2 per token.
    """
    r = log_ratio(ref, cand)
    return 0.5 * r * r


def kl_k3(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """k3 estimator of KL(cand || ref): k3 = exp(r) - 1 - r (>= 0, unbiased).

    Computed as expm1(r) - r, which keeps precision for |r| << 1 (the usual case here).

    Args:
        ref: reference logprobs.
        cand: candidate logprobs (the sampling distribution).

    Returns:
        k3 per token.
    """
    r = log_ratio(ref, cand)
    return np.expm1(r) - r


def token_clipped(ref: np.ndarray, cand: np.ndarray, clip: ClipRange = ClipRange()) -> np.ndarray:
    """PPO token clip indicator: exp(r) < 1 - eps_low or exp(r) > 1 + eps_high.

    The boundaries themselves are NOT clipped (the range is closed). The test is done in log
    space (r < log(1 - eps_low) or r > log(1 + eps_high)) so a ratio of exactly 0.8 or 1.28 is
    not misclassified by the rounding of exp().

    Args:
        ref: reference logprobs.
        cand: candidate logprobs.
        clip: the trust region.

    Returns:
        Boolean array, True where the token would be clipped.
    """
    r = log_ratio(ref, cand)
    return (r < clip.log_low) | (r > clip.log_high)


def sequence_clipped(ref: np.ndarray, cand: np.ndarray, clip: ClipRange = ClipRange()) -> bool:
    """GSPO sequence clip indicator: geometric-mean ratio exp(mean_t r) outside the clip range.

    Same closed range and log-space comparison as `token_clipped`, applied to mean_t r.

    Args:
        ref: one sequence's reference logprobs (at least one token).
        cand: the same sequence's candidate logprobs.
        clip: the trust region.

    Returns:
        True if the sequence would be clipped.

    Raises:
        ValueError: if the sequence is empty.
    """
    r = log_ratio(ref, cand)
    if r.size == 0:
        raise ValueError("sequence_clipped needs at least one token")
    m = float(np.mean(r))
    return m < clip.log_low or m > clip.log_high


def ess_normalized(log_w: np.ndarray) -> float:
    """Normalised effective sample size of importance weights w = exp(log_w), in (0, 1].

    ESS/n = (sum w)^2 / (n * sum w^2); 1 means all weights equal. Invariant to scaling w, so
    it is computed from exp(log_w - max log_w) and does not overflow.

    Args:
        log_w: log importance weights, e.g. r = ref - cand per token; must be finite.

    Returns:
        ESS/n, or NaN for an empty array.
    """
    log_w = np.asarray(log_w, dtype=np.float64)
    if log_w.size == 0:
        return float("nan")
    w = np.exp(log_w - np.max(log_w))
    return float(np.sum(w) ** 2 / (w.size * np.sum(w * w)))


def masked(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Tokens that a distribution masked: ref == -inf or cand == -inf.

    Such tokens (e.g. outside the trainer's top-k/top-p) have an infinite ratio; summarize and
    per_sequence count them and exclude them from every mean.

    Args:
        ref: reference logprobs.
        cand: candidate logprobs.

    Returns:
        Boolean array, True where either logprob is -inf.
    """
    return np.isneginf(np.asarray(ref, dtype=np.float64)) | np.isneginf(np.asarray(cand, dtype=np.float64))


# --- batch summaries ---


@dataclass(frozen=True)
class _Flat:
    """All tokens concatenated; `seq` is each token's sequence index; `valid` excludes masked."""

    ref: np.ndarray
    cand: np.ndarray
    ref_entropy: np.ndarray | None
    seq: np.ndarray
    lengths: np.ndarray
    valid: np.ndarray


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
            raise ValueError(f"sequence {i}: ref {a.shape} and cand {b.shape} must be equal 1-D shapes")
        if ents is not None and ents[i].shape != a.shape:
            raise ValueError(f"sequence {i}: ref_entropy shape {ents[i].shape} != ref shape {a.shape}")
    lengths = np.array([a.size for a in refs], dtype=np.int64)
    flat_ref = np.concatenate(refs) if refs else np.zeros(0)
    flat_cand = np.concatenate(cands) if cands else np.zeros(0)
    flat_ent = None if ents is None else (np.concatenate(ents) if ents else np.zeros(0))
    # -inf is a legitimate "masked" logprob; NaN or +inf is an upstream bug, so fail loudly.
    for name, arr in (("ref", flat_ref), ("cand", flat_cand)):
        bad = np.isnan(arr) | np.isposinf(arr)
        if bad.any():
            raise ValueError(f"{name} logprobs contain {int(bad.sum())} NaN/+inf values")
    if flat_ent is not None and not np.isfinite(flat_ent).all():
        raise ValueError("ref_entropy contains non-finite values")
    seq = np.repeat(np.arange(len(refs)), lengths)
    valid = ~masked(flat_ref, flat_cand)
    return _Flat(flat_ref, flat_cand, flat_ent, seq, lengths, valid)


def _seq_means(values: np.ndarray, flat: _Flat) -> np.ndarray:
    """Per-sequence mean of a per-token array over valid tokens; NaN for sequences with none."""
    n_seqs = flat.lengths.size
    sums = np.bincount(flat.seq[flat.valid], weights=values[flat.valid], minlength=n_seqs)
    counts = np.bincount(flat.seq[flat.valid], minlength=n_seqs)
    out = np.full(n_seqs, np.nan)
    np.divide(sums, counts, out=out, where=counts > 0)
    return out


def _mean(x: np.ndarray) -> float:
    """Mean ignoring NaN (sequences with no valid token), NaN without a warning if none is left.

    +inf is kept: k3 overflows for huge r, which is a real infinite mismatch, not a missing value.
    """
    x = x[~np.isnan(x)]
    return float(np.mean(x)) if x.size else float("nan")


def per_sequence(
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    ref_entropy: list[np.ndarray] | None = None,
    clip: ClipRange = ClipRange(),
) -> dict[str, np.ndarray]:
    """Per-sequence token means, the unit the verdict statistics resample.

    For sequence s with valid (unmasked) tokens T_s: metric_s = mean_{t in T_s} metric_t.
    A sequence with no valid token gets NaN (the statistics drop non-finite values).

    Args:
        ref: per sequence, reference logprobs of the sampled tokens (1-D each).
        cand: per sequence, candidate logprobs of the same tokens.
        ref_entropy: per sequence, the reference's exact entropy at each position, or None.
        clip: the PPO trust region.

    Returns:
        Arrays of length n_seqs: n_tokens, n_masked_tokens, abs_dlogp_mean, abs_dprob_mean,
        kl_k1_mean, kl_k2_mean, kl_k3_mean, clip_rate_token (fraction of clipped tokens),
        clipped_seq (GSPO indicator as 0/1), entropy_cand_mc (-mean cand), and entropy_ref_mean
        if ref_entropy is given.

    Raises:
        ValueError: on mismatched shapes, NaN or +inf logprobs, or non-finite entropy.
    """
    flat = _flatten(ref, cand, ref_entropy)
    return _per_sequence(flat, clip)


def _per_sequence(flat: _Flat, clip: ClipRange) -> dict[str, np.ndarray]:
    """per_sequence on already-flattened input."""
    n_seqs = flat.lengths.size
    out: dict[str, np.ndarray] = {
        "n_tokens": flat.lengths.astype(np.int64),
        "n_masked_tokens": np.bincount(flat.seq[~flat.valid], minlength=n_seqs).astype(np.int64),
    }
    # Masked tokens give inf/NaN here; _seq_means never reads them.
    with np.errstate(invalid="ignore", over="ignore"):
        tok = {
            "abs_dlogp": abs_dlogp(flat.ref, flat.cand),
            "abs_dprob": abs_dprob(flat.ref, flat.cand),
            "kl_k1": kl_k1(flat.ref, flat.cand),
            "kl_k2": kl_k2(flat.ref, flat.cand),
            "kl_k3": kl_k3(flat.ref, flat.cand),
        }
        r_mean = _seq_means(log_ratio(flat.ref, flat.cand), flat)
        clipped = token_clipped(flat.ref, flat.cand, clip).astype(np.float64)
    for name in _TOKEN_METRICS:
        out[f"{name}_mean"] = _seq_means(tok[name], flat)
    out["clip_rate_token"] = _seq_means(clipped, flat)
    gspo = ((r_mean < clip.log_low) | (r_mean > clip.log_high)).astype(np.float64)
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
) -> dict[str, float]:
    """Batch mismatch metrics: token means, sequence means, tails, clip rates, ESS, entropy.

    Token mean: mean over all valid tokens of the batch (long sequences weigh more).
    Sequence mean (`_seqmean`): mean over sequences of the per-sequence token mean.
    Masked tokens (ref or cand == -inf) are counted in n_masked_tokens and excluded from every
    other metric; sequences with no valid token are excluded from sequence means and
    clip_rate_seq. With no valid token at all, every metric is NaN (never 0).

    Args:
        ref: per sequence, reference logprobs of the sampled tokens (1-D each).
        cand: per sequence, candidate logprobs of the same tokens.
        ref_entropy: per sequence, the reference's exact entropy at each position, or None.
        clip: the PPO trust region.

    Returns:
        n_seqs, n_tokens (all, masked included), n_masked_tokens, masked_token_rate,
        abs_dlogp_mean/_p50/_p99/_max, abs_dprob_mean, kl_k1/k2/k3_mean, clip_rate_token,
        clip_rate_seq (GSPO), ess_norm (token weights exp(r)), entropy_cand_mc (-mean cand),
        entropy_ref_mean (only if ref_entropy is given), and `<name>_seqmean` for abs_dlogp,
        abs_dprob, kl_k1, kl_k2, kl_k3, clip_rate_token, entropy_cand_mc, entropy_ref.

    Raises:
        ValueError: on mismatched shapes, NaN or +inf logprobs, or non-finite entropy.
    """
    flat = _flatten(ref, cand, ref_entropy)
    seqs = _per_sequence(flat, clip)
    r = log_ratio(flat.ref[flat.valid], flat.cand[flat.valid])
    n_tokens = int(flat.lengths.sum())
    n_masked = int((~flat.valid).sum())
    out: dict[str, float] = {
        "n_seqs": len(ref),
        "n_tokens": n_tokens,
        "n_masked_tokens": n_masked,
        "masked_token_rate": n_masked / n_tokens if n_tokens else float("nan"),
    }
    valid_ref, valid_cand = flat.ref[flat.valid], flat.cand[flat.valid]
    adl = np.abs(r)
    out["abs_dlogp_mean"] = _mean(adl)
    for q in (50, 99):
        out[f"abs_dlogp_p{q}"] = float(np.percentile(adl, q)) if adl.size else float("nan")
    out["abs_dlogp_max"] = float(np.max(adl)) if adl.size else float("nan")
    with np.errstate(over="ignore"):
        out["abs_dprob_mean"] = _mean(abs_dprob(valid_ref, valid_cand))
        out["kl_k1_mean"] = _mean(kl_k1(valid_ref, valid_cand))
        out["kl_k2_mean"] = _mean(kl_k2(valid_ref, valid_cand))
        out["kl_k3_mean"] = _mean(kl_k3(valid_ref, valid_cand))
    out["clip_rate_token"] = _mean(token_clipped(valid_ref, valid_cand, clip).astype(np.float64))
    out["clip_rate_seq"] = _mean(seqs["clipped_seq"])
    out["ess_norm"] = ess_normalized(r)
    out["entropy_cand_mc"] = _mean(-valid_cand)
    if flat.ref_entropy is not None:
        out["entropy_ref_mean"] = _mean(flat.ref_entropy[flat.valid])
    for name in _TOKEN_METRICS:
        out[f"{name}_seqmean"] = _mean(seqs[f"{name}_mean"])
    out["clip_rate_token_seqmean"] = _mean(seqs["clip_rate_token"])
    out["entropy_cand_mc_seqmean"] = _mean(seqs["entropy_cand_mc"])
    if flat.ref_entropy is not None:
        out["entropy_ref_seqmean"] = _mean(seqs["entropy_ref_mean"])
    return out
