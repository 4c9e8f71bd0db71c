"""What the weight_update probes' judging shares: the gaps to a prediction and their means, a
threshold finding and a separation precondition on them, the effect share, the diagnosis decided,
the hybrid attribution of a partial update, and the scorer's batched calls."""

from __future__ import annotations

import numpy as np

from parity.trainer import hybrids
from parity.trainer.updates import SEPARATION, SplitScorer, keep_boundary
from parity.verdicts import core, stats


def seq_means(per_seq: list[np.ndarray]) -> np.ndarray:
    return np.array([float(np.mean(x)) for x in per_seq if len(x)])


def gap(eng: list[np.ndarray], ref: list[np.ndarray]) -> list[np.ndarray]:
    return [np.abs(np.asarray(e, dtype=np.float64) - r) for e, r in zip(eng, ref)]


def mean(per_seq: list[np.ndarray]) -> float:
    flat = (
        np.concatenate([x for x in per_seq if len(x)])
        if any(len(x) for x in per_seq)
        else np.zeros(0)
    )
    return float(flat.mean()) if len(flat) else float("nan")


def threshold(name: str, per_seq: list[np.ndarray], tol: float) -> core.Finding:
    finding = core.from_test(name, stats.threshold(seq_means(per_seq), tol))
    finding.value = mean(per_seq)  # the token mean, as the report's gaps are
    return finding


def separation(
    name: str, a: list[np.ndarray], b: list[np.ndarray], tol: float, why: str
) -> core.Precondition:
    """Two hypotheses are told apart only when their predictions differ by SEPARATION
    tolerances: a precondition, not a finding (closer, the data cannot decide)."""
    return core.at_least(name, mean(gap(a, b)), SEPARATION * tol, why)


def effect(gap_old: float, gap_new: float) -> float:
    """0 = the engine still follows the old weights, 1 = the new ones."""
    total = gap_old + gap_new
    return float(gap_old / total) if total > 0 else float("nan")


def decide(findings, pre, ordered) -> tuple[str, str | None, str]:
    """(outcome, diagnosis, why): the first (condition, diagnosis, why) that holds, once the
    findings failed."""
    outcome = core.combine(findings, pre)
    if outcome == "pass":
        return outcome, None, ""
    for cond, diagnosis, why in ordered:
        if cond:
            return outcome, diagnosis, why
    unmet = "; ".join(p.note for p in pre if not p.met)
    return outcome, None, unmet or "not enough evidence to decide"


def attribute(
    scorer: SplitScorer, predict, engine: list, tol: float, detail: dict, findings: list
) -> hybrids.Attribution:
    """Which components stayed stale after an update that matches neither checkpoint (hybrid
    hypotheses, parity.trainer.hybrids; `predict(pair, i)`: the probe's expected logprobs of sequence i
    with `pair` as the new weights); a count-limit finding on them when a hypothesis fits."""
    att = hybrids.explain(scorer, predict, engine, tol)
    detail["attribution"] = hybrids.summary(att)
    if att.fitted:
        findings.append(
            core.count_limit(
                "stale_components",
                len(att.stale),
                0,
                note=f"components computing with the old weights after the update: "
                f"{', '.join(att.stale) or 'none'}",
            )
        )
    return att


def attributed(att: hybrids.Attribution | None, tol: float) -> tuple[bool, str | None, str]:
    """The (condition, diagnosis, why) entry of `decide` for a partial update the hybrid search
    explained (condition False when there was no search or nothing fitted)."""
    diagnosis = att.diagnosis() if att is not None else None
    why = "only part of the update took effect: " + (hybrids.message(att, tol) if att else "")
    return diagnosis is not None, diagnosis, why


class _OneByOne:
    """The batched calls over a scorer that has only the one-sequence ones (old, new, keep,
    score), scoring one sequence at a time: e.g. a synthetic trainer in a test."""

    def __init__(self, scorer):
        self.scorer = scorer

    def old_many(self, pairs, sampling) -> list[np.ndarray]:
        return [self.scorer.old(p, t, sampling) for p, t in pairs]

    def new_many(self, pairs, sampling, new=None) -> list[np.ndarray]:
        if new is None:
            return [self.scorer.new(p, t, sampling) for p, t in pairs]
        return self.score_many([(p, t, 0) for p, t in pairs], sampling, new)

    def keep_many(self, pairs, ks, sampling, new=None) -> list[np.ndarray]:
        if new is None:
            return [self.scorer.keep(p, t, k, sampling) for (p, t), k in zip(pairs, ks)]
        return self.score_many(
            [(p, t, keep_boundary(len(p), k)) for (p, t), k in zip(pairs, ks)], sampling, new
        )

    def score_many(self, items, sampling, new=None) -> list[np.ndarray]:
        extra = {} if new is None else {"new": new}
        return [self.scorer.score(p, t, b, sampling, **extra) for p, t, b in items]


def batched(scorer):
    """The scorer's batched calls (old_many, new_many, keep_many, score_many: SplitScorer's),
    or the same one sequence at a time for a scorer with only the one-sequence calls."""
    return scorer if hasattr(scorer, "score_many") else _OneByOne(scorer)
