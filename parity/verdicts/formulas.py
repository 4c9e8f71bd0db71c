"""The mismatch formulas between a reference's and a rollout engine's sampled-token logprobs,
r = ref - cand: per-token differences and KL estimators, the PPO and GSPO clip ranges and
indicators, importance-weight ESS, masked and reference-excluded tokens. Pure numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ClipRange",
    "GSPO_CLIP",
    "abs_dlogp",
    "abs_dprob",
    "ess_normalized",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "log_ratio",
    "masked",
    "ref_excluded",
    "sequence_clipped",
    "token_clipped",
]


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


# GSPO's sequence-level trust region on the length-normalised ratio exp(mean_t r): Zheng et al.
# 2025, "Group Sequence Policy Optimization" (arXiv:2507.18071), eps_low=3e-4, eps_high=4e-4.
# Two orders of magnitude tighter than the token range, because mean_t r averages out token noise;
# judging sequences by the token range (0.2/0.28) would report a clip rate of ~0 whatever happens.
GSPO_CLIP = ClipRange(eps_low=3e-4, eps_high=4e-4)


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
    return np.abs(
        np.exp(np.asarray(ref, dtype=np.float64)) - np.exp(np.asarray(cand, dtype=np.float64))
    )


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


def sequence_clipped(ref: np.ndarray, cand: np.ndarray, clip: ClipRange = GSPO_CLIP) -> bool:
    """GSPO sequence clip indicator: geometric-mean ratio exp(mean_t r) outside the clip range.

    Same closed range and log-space comparison as `token_clipped`, applied to mean_t r.

    Args:
        ref: one sequence's reference logprobs (at least one token).
        cand: the same sequence's candidate logprobs.
        clip: the sequence trust region; default GSPO_CLIP (eps_low=3e-4, eps_high=4e-4, from
            Zheng et al. 2025, "Group Sequence Policy Optimization").

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

    Such tokens have an infinite ratio; summarize and per_sequence count them (split into
    ref-excluded and cand-excluded) and exclude them from every mean.

    Args:
        ref: reference logprobs.
        cand: candidate logprobs.

    Returns:
        Boolean array, True where either logprob is -inf.
    """
    return np.isneginf(np.asarray(ref, dtype=np.float64)) | np.isneginf(
        np.asarray(cand, dtype=np.float64)
    )


def ref_excluded(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Tokens the reference alone excludes: ref == -inf while cand is finite (the engine
    sampled a token the trainer's processed distribution gives probability 0). cand == -inf
    is the engine's own bug (n_cand_excluded), never counted here."""
    cand = np.asarray(cand, dtype=np.float64)
    return np.isneginf(np.asarray(ref, dtype=np.float64)) & ~np.isneginf(cand)
