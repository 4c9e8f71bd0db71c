"""Pieces the engine-vs-trainer categories and `parity judge` share: the gaps of an engine's
logprobs to the trainer's with the excluded-token rate, the resampling units, and the findings
built from them."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from parity.engines.base import Sequence
from parity.trainer.reference import RefScore
from parity.verdicts import core, formulas, frameworks, metrics, stats

# Sampled tokens the trainer's processed distribution excludes (probability 0). Tokens tied
# with the lowest kept logit are the platform's tie rule and never count. The rest are judged as
# a rate, not a count of zero: an engine whose logits differ from the trainer's by numerics
# alone still puts the top-p cut elsewhere now and then. Measured (docs/measurements.md#excluded-tokens):
# V1-parity 0/434 (tiny) and 2/1925 = 0.10% (SmolLM2); V0 0.8.5 bf16 1/552 and 34/2092 = 1.6%;
# an engine sampling without the trainer's top-k/top-p (the support control) 42/532 = 7.9% and
# 107/2011 = 5.3%. Per-token distance to the cut does not separate them (the mass above a
# top-p-excluded token is within 1 - p of p by construction); the rate does.
EXCLUDED_RATE_DEFAULT = 0.01
# Where the reference knows how far past the cut an excluded token sits, the excluded tokens
# split in two. Those an engine's bf16 numerics could have kept are judged by
# `excluded_numerics_rate` against EXCLUDED_NUMERICS_RATE_DEFAULT; the rest come from a sampler
# configured wider than the trainer and are judged by `excluded_rate` at 1%. "Could have kept":
# RefScore.cut_distance, the least spread (max - min over the vocabulary) of an error on the
# tempered logits that brings the token back inside the top-k/top-p cut (sampler.cut_distances:
# such an error moves a top-p cumulative mass by at most its spread in log-odds, and a top-k
# comparison by at most its spread), is at most NUMERICS_SPREAD. NUMERICS_SPREAD is measured bf16
# logit noise: the p90 spread of the reference's own tempered logits (bf16 body, fp32 head)
# against the fp32 model's over each position's top 64 tokens, 0.5227 on SmolLM2 at T 0.7 (a bf16
# model with a bf16 head: 0.5746; docs/measurements.md#bf16-logit-noise). On the four V0 0.8.5
# runs it leaves 0.23-0.59% of tokens beyond it (excluded_rate passes on every seed) and on the
# support control 3.6% (fails); docs/measurements.md#excluded-split. Scores without cut distances
# (a scores file with cut ranks only) fall back to the rank: the first token past the cut
# (NUMERICS_RANK). EXCLUDED_NUMERICS_RATE_DEFAULT: V0's rates within the spread are 0.94-1.38%
# (4 seeds), V1-parity's 0.07-0.17% (rank 1); 0.02 stays above them.
NUMERICS_SPREAD = 0.52
NUMERICS_RANK = 1
EXCLUDED_NUMERICS_RATE_DEFAULT = 0.02


class Words(NamedTuple):
    """How a judgement names its tokens (the token precondition, the excluded-rate note)."""

    tokens: str  # "sampled tokens"
    excluded: str  # what an excluded token is, after "<n> of <N> <tokens> "


# The categories judge the tokens an engine sampled; `parity judge` names its own (scored).
SAMPLED = Words("sampled tokens", "outside the trainer's top-k/top-p support")


class Sampled(NamedTuple):
    """An engine's sampled-token logprobs and the reference's scores of them, per sequence."""

    cand: list[np.ndarray]
    processed: list[np.ndarray]
    raw: list[np.ndarray]
    entropy: list[np.ndarray] | None
    boundary_tie: list[np.ndarray]
    near_cut: list[np.ndarray] | None  # excluded within numerics (near_cut); None: unknown


def arrays(values) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.float64) for v in values]


def sampled(seqs: list[Sequence], scores: list[RefScore]) -> Sampled:
    # A scores file without entropy (the logprobs category does not need it) leaves it None.
    entropy = (
        arrays([r.entropy for r in scores]) if all(r.entropy is not None for r in scores) else None
    )
    ties = [
        np.zeros(np.size(r.processed_logprob), bool)
        if r.boundary_tie is None
        else np.asarray(r.boundary_tie, bool)
        for r in scores
    ]
    return Sampled(
        arrays([s.logprobs for s in seqs]),
        arrays([r.processed_logprob for r in scores]),
        arrays([r.raw_logprob for r in scores]),
        entropy,
        ties,
        near_cut(scores),
    )


def near_cut(scores: list[RefScore]) -> list[np.ndarray] | None:
    """Per sequence, bool: the token sits past the trainer's cut by no more than an engine's
    bf16 numerics move it (cut_distance <= NUMERICS_SPREAD; where only the cut rank is known, the
    first token past the cut). None when neither is known (a scores file)."""
    if all(getattr(r, "cut_distance", None) is not None for r in scores):
        return [np.asarray(r.cut_distance, np.float64) <= NUMERICS_SPREAD for r in scores]
    if all(r.cut_rank is not None for r in scores):
        return [np.asarray(r.cut_rank, np.float64) <= NUMERICS_RANK for r in scores]
    return None


def gaps(
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    clip: formulas.ClipRange,
    entropy: list[np.ndarray] | None = None,
    boundary_tie: list[np.ndarray] | None = None,
    near: list[np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The engine's logprobs (cand) against the trainer's (ref): the summary and per-sequence
    metrics, with the excluded-token rate per sequence (`excluded_rate`) and, when the ties at
    the cut are known, the count of tied ones left out (`n_tied_excluded`). With `near`
    (near_cut: the tokens an engine's numerics could have kept) those are counted apart:
    `excluded_numerics_rate` per sequence, `n_excluded_numerics` in the summary."""
    summary = metrics.summarize(ref, cand, entropy, clip)
    per_seq = metrics.per_sequence(ref, cand, entropy, clip)
    per_seq["excluded_rate"], n_tied = metrics.excluded_rates(ref, cand, boundary_tie, near)
    if boundary_tie is not None:
        summary["n_tied_excluded"] = n_tied
    if near is not None:
        rates, n_near = metrics.numerics_rates(ref, cand, near, boundary_tie)
        per_seq["excluded_numerics_rate"], summary["n_excluded_numerics"] = rates, n_near
    return summary, per_seq


def logprob_gaps(
    seqs: list[Sequence],
    scores: list[RefScore],
    clip: formulas.ClipRange,
) -> dict[str, Any]:
    """An engine's sampled-token logprobs against the reference's processed and raw logprobs:
    {"vs_processed": summary, "vs_raw": summary, "per_seq": per-sequence arrays}."""
    s = sampled(seqs, scores)
    summary, per_seq = gaps(s.processed, s.cand, clip, s.entropy, s.boundary_tie, s.near_cut)
    vs_raw = metrics.summarize(s.raw, s.cand, None, clip)
    return {"vs_processed": summary, "vs_raw": vs_raw, "per_seq": per_seq}


def clusters(prompt_ids) -> np.ndarray | None:
    """The resampling unit: the prompt when a prompt has several samples (its sequences are
    correlated), else None (each sequence is its own unit)."""
    if prompt_ids is None:
        return None
    ids = np.asarray(prompt_ids)
    return ids if ids.size and len(np.unique(ids)) < ids.size else None


def tokens_precondition(
    n_tokens: int,
    min_tokens: int,
    what: str = "sampled tokens",
) -> core.Precondition:
    return core.at_least(
        "n_tokens",
        n_tokens,
        min_tokens,
        f"only {n_tokens} {what} (< {min_tokens}): too little data to decide",
    )


def excluded_finding(
    per_seq: dict[str, np.ndarray],
    summary: dict[str, Any],
    tolerances: dict[str, float],
    groups: np.ndarray | None,
    words: Words = SAMPLED,
) -> core.Finding:
    """The excluded-token rate (metrics.excluded_rates, per_seq["excluded_rate"]) by a
    one-sample bound against its tolerance; the note says whether ties at the cut were known
    and how many first tokens past the cut were left to excluded_numerics_finding."""
    limit = tolerances.get("excluded_rate", EXCLUDED_RATE_DEFAULT)
    test = stats.threshold(per_seq["excluded_rate"], limit, clusters=groups)
    n, n_tokens = int(summary.get("n_ref_excluded", 0)), int(summary.get("n_tokens", 0))
    ties = (
        f"{int(summary['n_tied_excluded'])} of them tied at the cut, not counted"
        if "n_tied_excluded" in summary
        else "no boundary_tie column: ties at the cut count"
    )
    near = (
        f"{int(summary['n_excluded_numerics'])} within the numerics of the cut, judged apart"
        if "n_excluded_numerics" in summary
        else "distance past the cut unknown: every one counts"
    )
    return core.from_test(
        "excluded_rate",
        test,
        note=f"{n} of {n_tokens} {words.tokens} {words.excluded} ({ties}; {near}); {test.reason}",
    )


def excluded_numerics_finding(
    per_seq: dict[str, np.ndarray],
    summary: dict[str, Any],
    tolerances: dict[str, float],
    groups: np.ndarray | None,
    words: Words = SAMPLED,
) -> core.Finding | None:
    """The rate of excluded tokens an engine's numerics could have kept (near_cut: within
    NUMERICS_SPREAD of the cut, e.g. moved by a bf16 head) by a one-sample bound against its own
    tolerance; None when that is unknown (a scores file without cut distances or ranks)."""
    if "excluded_numerics_rate" not in per_seq:
        return None
    limit = tolerances.get("excluded_numerics_rate", EXCLUDED_NUMERICS_RATE_DEFAULT)
    test = stats.threshold(per_seq["excluded_numerics_rate"], limit, clusters=groups)
    n, n_tokens = int(summary["n_excluded_numerics"]), int(summary.get("n_tokens", 0))
    return core.from_test(
        "excluded_numerics_rate",
        test,
        note=f"{n} of {n_tokens} {words.tokens} sit past the trainer's top-k/top-p cut by "
        "no more than bf16 numerics move it (a logit-error spread of at most "
        f"{NUMERICS_SPREAD} tempered nats); {test.reason}",
    )


# The findings every category that scores tokens emits (count limits, limit 0), with kinds.
VANISHED = {"engine_neginf": "count_limit", "absurd_logprob": "count_limit"}
VANISHED_FIX = (
    "an engine gives a token it sampled logprob -inf, or a side writes a mask's fill value "
    "(-1e4, finfo.min) where -inf was meant: fix that side (the message says which)"
)


# The trainer frameworks' gates a scenario asks for (`gates`, `--gate`): findings of every
# category whose judge scores the candidate's tokens with the reference (the report layer adds
# them, parity.report.frameworks.attach), and their diagnosis. GATES_PAIR: also the baseline's,
# for a category that scores both engines against the trainer.
GATES = frameworks.declared()
GATES_PAIR = frameworks.declared((frameworks.CANDIDATE, "baseline"))
GATE_DIAGNOSIS = {frameworks.DIAGNOSIS: frameworks.FIX}


def _count(arrays: list[np.ndarray], mask) -> tuple[int, float]:
    """How many values `mask` picks in the arrays, and the lowest of them (NaN when none)."""
    flat = np.concatenate([np.asarray(a, np.float64) for a in arrays]) if arrays else np.zeros(0)
    picked = flat[mask(flat)]
    return int(picked.size), float(picked.min()) if picked.size else float("nan")


def engine_neginf_finding(
    engine: list[np.ndarray], n_tokens: int, words: Words = SAMPLED
) -> core.Finding:
    """Tokens to which the engine gives logprob -inf (count limit 0). metrics leaves them out
    of every mean; in RL each is an infinite importance ratio, so one is a failure."""
    n, _ = _count(engine, np.isneginf)
    note = (
        f"{n} of {n_tokens} {words.tokens} have engine logprob -inf: the engine gives a token "
        "it returned probability 0, an infinite importance ratio in RL (left out of every "
        "mean); an engine bug (a masked logit it sampled anyway, a -inf written for a NaN)"
        if n
        else f"no engine logprob is -inf ({n_tokens} {words.tokens})"
    )
    return core.count_limit("engine_neginf", n, 0, n_tokens, note)


def absurd_finding(
    sides: dict[str, list[np.ndarray]], n_tokens: int, words: Words = SAMPLED
) -> core.Finding:
    """Finite logprobs below metrics.ABSURD_LOGPROB on any side (count limit 0): a mask's fill
    value (-1e4, finfo.min) where -inf was meant. metrics masks them like -inf tokens; the note
    says what they look like (count and lowest value per side)."""
    counts = {side: _count(arrays, metrics.is_absurd) for side, arrays in sides.items()}
    total = sum(n for n, _ in counts.values())
    seen = [f"{n} {side} (lowest {low:.6g})" for side, (n, low) in counts.items() if n]
    note = (
        f"{' and '.join(seen)} logprobs of {n_tokens} {words.tokens} are finite but below "
        f"{metrics.ABSURD_LOGPROB:.2f}, the log of the smallest fp32/bf16 probability: a "
        "mask's fill value (-1e4, -1e9, finfo.min) written where -inf was meant, not a "
        "logprob; write -inf for masked tokens (these are left out of the means)"
        if total
        else f"no finite logprob below {metrics.ABSURD_LOGPROB:.2f}"
    )
    return core.count_limit("absurd_logprob", total, 0, n_tokens, note)


def vanished_findings(
    trainer: list[np.ndarray], engine: list[np.ndarray], n_tokens: int, words: Words = SAMPLED
) -> list[core.Finding]:
    """engine_neginf and absurd_logprob for one engine's tokens against the trainer's."""
    return [
        engine_neginf_finding(engine, n_tokens, words),
        absurd_finding({"trainer": trainer, "engine": engine}, n_tokens, words),
    ]


def vanished_message(findings: list[core.Finding]) -> str | None:
    """The failed vanishing-token findings' notes, or None when neither failed."""
    notes = [f.note for f in findings if f.name in VANISHED and f.outcome == "fail" and f.note]
    return "; ".join(notes) or None


def with_vanished(
    verdict: core.Verdict, engine: list[np.ndarray], n_tokens: int, words: Words = SAMPLED
) -> core.Verdict:
    """A category's verdict with engine_neginf and absurd_logprob over the engine's logprobs
    added (for categories whose trainer is parity's own reference, which writes -inf for an
    excluded token): a failure of either becomes the diagnosis `vanished_tokens` unless the
    verdict already failed, whose message then names it too."""
    found = [
        engine_neginf_finding(engine, n_tokens, words),
        absurd_finding({"engine": engine}, n_tokens, words),
    ]
    verdict.findings += found
    was = verdict.outcome
    verdict.recombine()
    message = vanished_message(found)
    if message and was == "fail":
        verdict.message += f"; also {message}"
    elif message:
        verdict.diagnosis, verdict.message = "vanished_tokens", f"{message} ({verdict.message})"
    return verdict


def support_fix(count: int, n_tokens: int) -> str:
    return (
        f"{count} of {n_tokens} sampled tokens are impossible under the trainer's processed "
        "distribution (probability 0): the engine's sampler and the reference disagree on "
        "the support. Check that the engine gets the same top_k/top_p/min_p as the trainer "
        "assumes (request parameters, generation_config defaults), the top-k tie rule of "
        "its platform, and sampling parameters the reference does not model (min_p, "
        "penalties, logit bias)"
    )


def threshold_findings(
    per_seq: dict[str, np.ndarray],
    summary: dict[str, Any],
    tolerances: dict[str, float],
    groups: np.ndarray | None,
) -> list[core.Finding]:
    """The per-sequence mean |dlogp| and k3 KL against their tolerances (one-sample bound on
    the mean over sequences, or over prompts when they have several samples), and the p99."""
    out = []
    for name, key in (("abs_dlogp_seqmean", "abs_dlogp_mean"), ("kl_k3_seqmean", "kl_k3_mean")):
        limit = tolerances.get(key)
        if limit is not None:
            out.append(core.from_test(name, stats.threshold(per_seq[key], limit, clusters=groups)))
    if "abs_dlogp_p99" in tolerances:
        out.append(
            core.bound("abs_dlogp_p99", summary["abs_dlogp_p99"], tolerances["abs_dlogp_p99"])
        )
    return out
