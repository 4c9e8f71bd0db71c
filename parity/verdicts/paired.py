"""Paired per-token attribution of a small weight update: how much of a hypothesis's predicted
deviation from the expected logprobs an engine shows.

A stale component (one layer, the tied head, a norm) kept old through an RL-step-sized update
moves logprobs less than the engine's own numerical noise on average, so a mean |dlogp| cannot
see it. But it moves them the same way on every run, token by token: regress the engine's gap
to the expected logprobs, e = engine - expected, onto the hypothesis's, d = hypothesis -
expected, over every token. The slope (the share of d the engine shows) is ~1 when the
hypothesis holds and ~0 when the engine follows the expected weights, whatever their noise,
which is per-token and does not line up with d. Its interval comes from resampling sequences;
the noise sets its width (docs/measurements.md#paired-share).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.verdicts import core
from parity.verdicts.stats import DEFAULT_ALPHA, DEFAULT_MIN_N

# A hypothesis holds when the lower end of its share's interval exceeds this: the engine is
# closer to it than to the expected weights (share 0.5 is halfway between the two).
SHARE_LIMIT = 0.5
# A share is resolved (the data can tell the hypothesis from the expected weights) when its
# interval's half-width is at most this: an engine at share 0 then cannot reach SHARE_LIMIT's
# lower bound short of a ~5-standard-error excursion, nor one at share 1 fall below it.
RESOLUTION = 0.25
N_RESAMPLES = 2000


@dataclass(frozen=True)
class Share:
    """One hypothesis's share of the engine's deviation.

    Attributes:
        share: sum(e * d) / sum(d^2) over every token (NaN when d is 0 everywhere).
        ci_low, ci_high: (1 - 2 alpha) percentile bootstrap interval, resampling sequences.
        gain: mean over tokens of e^2 - (e - d)^2: > 0 when the hypothesis fits the engine
            better than the expected weights.
        rms_hypothesis: root mean square of d (how far the hypothesis moves logprobs).
        n_sequences, n_tokens: the units and tokens used.
    """

    share: float
    ci_low: float
    ci_high: float
    gain: float
    rms_hypothesis: float
    n_sequences: int
    n_tokens: int

    @property
    def resolved(self) -> bool:
        """The interval is narrow enough to tell the hypothesis from the expected weights."""
        half = (self.ci_high - self.ci_low) / 2
        return bool(np.isfinite(half) and half <= RESOLUTION)

    @property
    def holds(self) -> bool:
        """Resolved, and the engine is closer to the hypothesis (lower end > SHARE_LIMIT)."""
        return self.resolved and bool(self.ci_low > SHARE_LIMIT)

    def to_dict(self) -> dict:
        return {
            "share": self.share,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "gain": self.gain,
            "rms_hypothesis": self.rms_hypothesis,
            "resolved": self.resolved,
            "holds": self.holds,
            "n_sequences": self.n_sequences,
            "n_tokens": self.n_tokens,
        }


def share(
    engine: list[np.ndarray],
    expected: list[np.ndarray],
    hypothesis: list[np.ndarray],
    alpha: float = DEFAULT_ALPHA,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    min_n: int = DEFAULT_MIN_N,
) -> Share:
    """The share of `hypothesis - expected` the engine shows, per sequence lists of per-token
    logprobs (same lengths); non-finite tokens are dropped. Fewer than `min_n` sequences with
    tokens: an unresolved share (NaN interval)."""
    a, b, g, n = [], [], [], []
    for eng, exp, hyp in zip(engine, expected, hypothesis):
        e = np.asarray(eng, np.float64) - np.asarray(exp, np.float64)
        d = np.asarray(hyp, np.float64) - np.asarray(exp, np.float64)
        ok = np.isfinite(e) & np.isfinite(d)
        e, d = e[ok], d[ok]
        if e.size:
            a.append(float(e @ d))
            b.append(float(d @ d))
            g.append(float(np.sum(e * e - (e - d) ** 2)))
            n.append(e.size)
    a, b, g, n = map(np.asarray, (a, b, g, n))
    tokens = int(n.sum()) if n.size else 0
    bsum = float(b.sum()) if b.size else 0.0
    point = float(a.sum() / bsum) if bsum > 0 else float("nan")
    lo = hi = float("nan")
    if n.size >= min_n and bsum > 0:
        idx = np.random.default_rng(seed).integers(0, n.size, (n_resamples, n.size))
        den = b[idx].sum(axis=1)
        ratios = np.divide(a[idx].sum(axis=1), den, out=np.full(den.shape, np.nan), where=den > 0)
        lo, hi = (float(q) for q in np.nanquantile(ratios, [alpha, 1 - alpha]))
    return Share(
        point,
        lo,
        hi,
        float(g.sum() / tokens) if tokens else float("nan"),
        float(np.sqrt(bsum / tokens)) if tokens else float("nan"),
        int(n.size),
        tokens,
    )


def best(shares: dict[str, Share]) -> str | None:
    """The resolved hypothesis that fits the engine best (largest gain) among those that hold,
    or None when none holds."""
    holding = {k: s for k, s in shares.items() if s.holds}
    return max(holding, key=lambda k: holding[k].gain) if holding else None


def finding(name: str, shares: dict[str, Share]) -> core.Finding:
    """A bound finding over hypotheses' shares: fails when a resolved hypothesis holds (its
    share's lower end > SHARE_LIMIT; the value is the best one's share), passes when every
    resolved one stays below (upper end <= SHARE_LIMIT; the value is the largest share),
    inconclusive otherwise or when none is resolved. Unresolved hypotheses are listed, not
    judged: the data cannot tell them from the expected weights."""
    resolved = {k: s for k, s in shares.items() if s.resolved}
    unresolved = sorted(set(shares) - set(resolved))
    tail = f"; unresolved (below the noise): {', '.join(unresolved)}" if unresolved else ""
    test = {k: s.to_dict() for k, s in shares.items()}
    if not resolved:
        note = "no hypothesis is resolved: the update moves logprobs less than the noise"
        return core.Finding(name, "bound", "inconclusive", float("nan"), SHARE_LIMIT, test, note)
    top = best(shares)
    if top is not None:
        s = shares[top]
        note = (
            f"the engine shows {s.share:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}] of the "
            f"deviation of hypothesis {top!r} (> {SHARE_LIMIT:g}){tail}"
        )
        return core.Finding(name, "bound", "fail", s.share, SHARE_LIMIT, test, note)
    k = max(resolved, key=lambda k: resolved[k].ci_high)
    s = resolved[k]
    outcome = "pass" if s.ci_high <= SHARE_LIMIT else "inconclusive"
    note = (
        f"largest share {s.share:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}] ({k!r}) of "
        f"{len(resolved)} resolved hypotheses, limit {SHARE_LIMIT:g}{tail}"
    )
    return core.Finding(name, "bound", outcome, s.share, SHARE_LIMIT, test, note)
