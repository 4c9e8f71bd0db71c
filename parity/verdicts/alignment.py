"""Whether two per-token logprob columns are off by one position against each other: the gap
between them, beyond tolerance as aligned, collapses when one is read one position later or
earlier (the commonest alignment bug when a batch is saved by hand: the next-token shift
logits[:, :-1] against tokens[:, 1:] missed or applied twice, or a prompt position kept).
`parity judge` and the logprobs category both name it `off_by_one`. Pure numpy."""

from __future__ import annotations

import math

import numpy as np

from parity.verdicts.fmt import fmt

# The engine column is off by one position when, read one position later or earlier than the
# trainer's, its gap falls within the abs_dlogp_mean tolerance and to at most this share of the
# aligned gap (docs/measurements.md#off-by-one: a real dump shifted by one).
COLLAPSE = 0.25
# mean |engine[t + s] - trainer[t]| for s = +1 (the engine's logprob of token t sits one
# position later) and s = -1 (one position earlier).
SHIFTS = {"gap_engine_later": 1, "gap_engine_earlier": -1}


def shifted_gap(engine: list[np.ndarray], trainer: list[np.ndarray], s: int) -> float:
    """mean |engine[t + s] - trainer[t]| within each sequence, over the pairs both give a
    finite logprob; NaN when no pair is left."""
    pairs = [(e[s:], t[:-s]) if s > 0 else (e[:s], t[-s:]) for e, t in zip(engine, trainer)]
    eng = np.concatenate([e for e, _ in pairs]) if pairs else np.zeros(0)
    tr = np.concatenate([t for _, t in pairs]) if pairs else np.zeros(0)
    ok = np.isfinite(eng) & np.isfinite(tr)
    return float(np.mean(np.abs(eng[ok] - tr[ok]))) if ok.any() else math.nan


def shifted_gaps(engine: list[np.ndarray], trainer: list[np.ndarray]) -> dict[str, float]:
    """The gap under each shift of SHIFTS (shape keys gap_engine_later / gap_engine_earlier)."""
    engine = [np.asarray(e, np.float64) for e in engine]
    trainer = [np.asarray(t, np.float64) for t in trainer]
    return {key: shifted_gap(engine, trainer, s) for key, s in SHIFTS.items()}


def off_by_one(gap: float, shape: dict[str, float], tolerance: float) -> str | None:
    """The shape key of the shift under which a gap beyond `tolerance` collapses (within it, and
    to at most COLLAPSE of the aligned gap), or None."""
    if not (math.isfinite(gap) and gap > tolerance):
        return None
    fits = {
        k: shape[k]
        for k in SHIFTS
        if math.isfinite(shape.get(k, math.nan)) and shape[k] <= min(tolerance, COLLAPSE * gap)
    }
    return min(fits, key=fits.get) if fits else None


def message(shifted: str, shape: dict[str, float], gap: float) -> str:
    """What an off_by_one diagnosis says: which way, the gap shifted back and as aligned, and
    the usual causes."""
    later = shifted == "gap_engine_later"
    return (
        f"the engine's logprob at position t {'+' if later else '-'} 1 matches the trainer's at t "
        f"(mean |dlogp| {fmt(shape[shifted], 4)} shifted back, {fmt(gap, 4)} as aligned); save each "
        "side's logprob of token t at position t: the usual cause is a logprob taken from "
        "logits[:, t] for token t (the next-token shift logits[:, :-1] against tokens[:, 1:] "
        "missed or applied twice), or the prompt's last position kept"
    )
