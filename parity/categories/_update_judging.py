"""What the weight_update probes' judging shares: the gaps to a prediction and their means, a
threshold finding and a separation precondition on them, the effect share, the diagnosis decided,
the hybrid attribution of a partial update, and the scorer's batched calls."""

from __future__ import annotations

import numpy as np

from parity.trainer import hybrids
from parity.trainer.update_spec import SEPARATION
from parity.trainer.updates import SplitScorer, keep_boundary
from parity.verdicts import core, paired, stats


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


def paired_rule_applies(scorer) -> bool:
    """The paired rule needs the trainer's predictions exact next to the hypotheses' deviations:
    fp32 only. In bf16 the trainer's own rounding moves them as much as a step does
    (docs/measurements.md#paired-share), so a step-sized bf16 update stays inconclusive."""
    return getattr(scorer, "dtype", None) == "float32"


def separation(
    name: str,
    a: list[np.ndarray],
    b: list[np.ndarray],
    tol: float,
    why: str,
    engine: list[np.ndarray] | None = None,
) -> core.Precondition:
    """Two hypotheses are told apart only when their predictions differ by SEPARATION
    tolerances, or (given the `engine`'s logprobs) when the paired share of a's deviation from
    b is resolved (parity.verdicts.paired: the engine's own noise is small enough to tell
    them apart token by token): a precondition, not a finding (closer, the data cannot
    decide)."""
    apart = mean(gap(a, b))
    pre = core.at_least(name, apart, SEPARATION * tol, why)
    if not pre.met and engine is not None:
        s = paired.share(engine, b, a)
        if s.resolved:
            half = (s.ci_high - s.ci_low) / 2
            note = f"mean apart {apart:.3g} < {SEPARATION * tol:.3g}, paired share resolved"
            return core.Precondition(name, True, half, paired.RESOLUTION, note)
        pre.note += f" (nor is the paired share resolved: half-width {(s.ci_high - s.ci_low) / 2:.3g} > {paired.RESOLUTION:g})"
    return pre


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


# The single-component hypotheses cost about half a forward each (hybrids.singles), so they are
# scored only where one could hide under the tolerance: when the whole update moves logprobs by
# less than this many tolerances per component. At step size on SmolLM2 the smallest layer moved
# them by 1/35 of the whole update (docs/measurements.md#paired-share); a scale-1.0
# perturbation moves each layer by far more than the tolerance.
def hides(g_old: float, n_components: int, tol: float) -> bool:
    """Whether a single stale component could stay under the tolerance: the whole update's
    mean |dlogp| is below one tolerance per component."""
    return bool(g_old < n_components * tol)


OLD = "old weights"  # a paired-screen hypothesis: the update did not land
STALE_CACHE = "stale prefix cache"  # one: the prompt's cached KV from before the update


def screen(
    scorer, many, engine: list, expected: list, extra: dict, detail: dict, findings: list
) -> str | None:
    """The paired screen of an update the mean |dlogp| calls taken (parity.verdicts.paired):
    each hypothesis in `extra` (OLD, STALE_CACHE: name -> predicted logprobs per sequence) and,
    when the update is small enough for one to hide (`hides`), each single stale component
    (hybrids.singles; `many(pair, idx)`: the expected logprobs of sequences idx with `pair` as
    the new weights) against `expected`, as the finding `stale_share`. Returns the hypothesis
    that holds best, or None."""
    hyps = dict(extra)
    if many is not None:
        old_pair, new_pair = scorer.pairs()
        hyps.update(hybrids.singles(hybrids.HybridModel(old_pair, new_pair), many, len(engine)))
    detail["paired_components"] = many is not None
    shares = {k: paired.share(engine, expected, v) for k, v in hyps.items()}
    detail["paired_shares"] = {k: s.to_dict() for k, s in shares.items()}
    findings.append(paired.finding("stale_share", shares))
    top = paired.best(shares)
    if top is not None and top not in extra:
        diagnosis = hybrids.Attribution([top], float("nan"), True).diagnosis()
        detail["attribution"] = {"stale": [top], "diagnosis": diagnosis, "rule": "paired share"}
    return top


def screened(top: str | None, detail: dict) -> tuple[bool, str | None, str]:
    """The (condition, diagnosis, why) entry of `decide` for the hypothesis the paired screen
    found (condition False when none holds)."""
    if top is None:
        return False, None, ""
    s = detail["paired_shares"][top]
    what = (
        f"the engine shows {s['share']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}] of the "
        f"per-token deviation {top} would cause (paired screen; 0 = none, 1 = all)"
    )
    if top == OLD:
        return True, "no_effect", f"the update did not take effect: {what}"
    if top == STALE_CACHE:
        return (
            True,
            "stale_prefix_cache",
            (
                f"prefix cache reused KV from before the update: {what}; disable prefix caching or "
                "reset it (pause_generation(clear_cache=True) or reset_prefix_cache() after the load)"
            ),
        )
    att = hybrids.Attribution([top], float("nan"), True)
    diagnosis = att.diagnosis()
    return (
        True,
        diagnosis,
        (
            f"only part of the update took effect: {what}, i.e. {top} kept the old weights: "
            f"{hybrids.FIXES[diagnosis]}"
        ),
    )


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
