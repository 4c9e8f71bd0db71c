"""Category `logprobs`: the engine's sampled-token logprobs must be the trainer's logprobs, by
the semantics the scenario declares (`[reference] semantics`): tempered (log_softmax(logits / T),
what RL frameworks compute, the default), processed (temperature, top-k, top-p replayed) or raw."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.categories import _common
from parity.categories.base import Category
from parity.trainer import semantics as trainer_semantics
from parity.trainer.sampler import GREEDY_EPS
from parity.verdicts import alignment, core, formulas, metrics, stats
from parity.verdicts.fmt import fmt

# A systematic signed gap (engine - trainer) biases every importance ratio by exp(offset) even
# when |dlogp| stays near the numerics: the truncation offset of a tempered trainer is 0.051 nats
# (mean of sequence means) on SmolLM2 at T 0.7 / top-p 0.9 / top-k 50, |dlogp| 0.059 against a
# 0.06 bound (inconclusive), while correct engines sit within 0.0012 of zero
# (docs/measurements.md#logprobs-offset).
OFFSET_MEAN_DEFAULT = 0.02


class Logprobs(Category):
    name = "logprobs"
    summary = "logprob semantics: engine logprobs vs the trainer's (tempered or processed)"
    tolerances = {
        "abs_dlogp_mean": 0.06,
        "kl_k3_mean": 0.01,
        "abs_dlogp_p99": 0.6,
        "excluded_rate": _common.EXCLUDED_RATE_DEFAULT,
        "excluded_numerics_rate": _common.EXCLUDED_NUMERICS_RATE_DEFAULT,
        "offset_mean": OFFSET_MEAN_DEFAULT,
    }
    diagnoses = {
        "support_mismatch": "the engine samples tokens the trainer's processed distribution "
        "excludes: align top_k/top_p/min_p and the tie rule",
        "raw_logprobs": "set logprobs_mode=processed_logprobs",
        "processed_mismatch": "check the lm_head dtype (lm_head category) and sampler order",
        "truncation_bias": "sample with top_p = 1 and top_k off for RL, or have the trainer "
        "replay the engine's top-k/top-p support (vLLM's sampling mask where offered), or "
        'declare [reference] semantics = "processed" if the trainer replays it',
        "vanished_tokens": _common.VANISHED_FIX,
        **_common.GATE_DIAGNOSIS,
        "off_by_one": "save each side's logprob of token t at position t: the engine's and the "
        "trainer's (a scores file's trainer_logprob) are one position apart",
        "narrower_support": "give the engine the trainer's top_k/top_p (and temperature): its "
        "logprobs sit one-signed above a replaying trainer's, renormalised over a smaller set",
    }
    findings = {
        "offset_seqmean": "bound",
        "abs_dlogp_seqmean": "bound",
        "kl_k3_seqmean": "bound",
        "abs_dlogp_p99": "bound",
        "excluded_rate": "bound",
        "excluded_numerics_rate": "bound",
        **_common.VANISHED,
        **_common.GATES,
    }
    key_metric_name = "abs_dlogp_mean"
    scores_columns = {
        "trainer_logprob": "the processed logprobs it judges",
        "trainer_raw_logprob": "its raw_logprobs diagnosis compares the engine "
        "with the raw logprobs",
    }

    def parse(self, data, sampling, path):
        problems = []
        if sampling.temperature < GREEDY_EPS:
            problems.append(
                (
                    path,
                    "sampling.temperature",
                    "greedy sampling (T = 0) cannot tell raw from processed logprobs "
                    "(the engine does not temper a greedy request): use a temperature "
                    "such as 0.7",
                )
            )
        # T = 1 without truncation is allowed (the most common RL setting): the bounds still
        # fail on a bf16 head, a kernel difference or stale weights; only the raw-vs-processed
        # diagnosis cannot tell the two apart there, and check() says it skipped it.
        return {}, problems

    def judge(self, res, refs):
        sc = res.scenario
        seqs = res.runs["candidate"].sequences
        scores = refs.get(res.model_path, sc.head_dtype, res.runs["candidate"]).score(
            [(s.prompt_token_ids, s.token_ids) for s in seqs], sc.sampling
        )
        semantics = getattr(sc, "semantics", trainer_semantics.DEFAULT)
        return check(seqs, scores, sc.tolerances, sc.clip, sc.min_tokens, semantics, sc.sampling)


@dataclass
class TokenJudgement:
    """The logprobs check of an engine's tokens against the trainer's, before any diagnosis."""

    summary: dict[str, Any]  # metrics.summarize, with n_tied_excluded when ties are known
    per_seq: dict[str, np.ndarray]  # metrics.per_sequence, with excluded_rate
    findings: list[core.Finding]
    preconditions: list[core.Precondition]
    outcome: str

    @property
    def excluded(self) -> core.Finding:
        return next(f for f in self.findings if f.name == "excluded_rate")


def judge_tokens(
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    tolerances: dict[str, float],
    clip: formulas.ClipRange,
    min_tokens: int,
    *,
    entropy: list[np.ndarray] | None = None,
    boundary_tie: list[np.ndarray] | None = None,
    prompt_ids=None,
    words: _common.Words = _common.SAMPLED,
    near_cut: list[np.ndarray] | None = None,
) -> TokenJudgement:
    """Per-sequence logprobs of an engine (cand) judged against the trainer's (ref).

    Findings: the signed offset (offset_finding), per-sequence mean |dlogp| and k3 KL by a
    one-sample bound (pass when the upper
    95% bound is within the tolerance, fail when the lower one is beyond it; the unit is the
    prompt when prompts have several samples), the p99 |dlogp|, the excluded-token rate
    (ties at the cut not counted when boundary_tie is given; with near_cut, the tokens within
    an engine's numerics of the cut judged apart by excluded_numerics_rate), and two count limits of 0:
    engine_neginf (engine logprob -inf) and absurd_logprob (a finite logprob below
    metrics.ABSURD_LOGPROB on either side). Precondition: at least
    `min_tokens` tokens. The category's check and `parity judge` both judge by this.
    """
    summary, per_seq = _common.gaps(ref, cand, clip, entropy, boundary_tie, near_cut)
    groups = _common.clusters(prompt_ids)
    findings = _common.threshold_findings(per_seq, summary, tolerances, groups)
    findings.insert(0, offset_finding(ref, cand, tolerances, groups))  # the signed gap
    findings += _common.vanished_findings(ref, cand, int(summary["n_tokens"]), words)
    findings.append(_common.excluded_finding(per_seq, summary, tolerances, groups, words))
    numerics = _common.excluded_numerics_finding(per_seq, summary, tolerances, groups, words)
    findings += [numerics] if numerics is not None else []
    pre = [_common.tokens_precondition(int(summary["n_tokens"]), min_tokens, words.tokens)]
    return TokenJudgement(summary, per_seq, findings, pre, core.combine(findings, pre))


def _judge(s: _common.Sampled, ref, tolerances, clip, min_tokens, seqs) -> TokenJudgement:
    return judge_tokens(
        ref,
        s.cand,
        tolerances,
        clip,
        min_tokens,
        entropy=s.entropy,
        boundary_tie=s.boundary_tie,
        prompt_ids=[q.prompt_index for q in seqs],
        near_cut=s.near_cut,
    )


def offset_finding(
    ref: list[np.ndarray], cand: list[np.ndarray], tolerances: dict[str, float], groups
) -> core.Finding:
    """The mean signed gap engine - trainer per sequence (tokens both sides score as
    probabilities: finite and not below metrics.ABSURD_LOGPROB, the tokens every other mean
    uses), by a one-sample bound of its magnitude: the per-sequence means are signed by the
    overall mean's sign, so the bound is on |mean| in the observed direction."""
    limit = tolerances.get("offset_mean", OFFSET_MEAN_DEFAULT)
    per_seq = []
    for r, c in zip(ref, cand):
        ok = metrics.both_probabilities(r, c)
        per_seq.append(float(np.mean(c[ok] - r[ok])) if ok.any() else np.nan)
    values = np.asarray(per_seq, dtype=np.float64)
    finite = values[np.isfinite(values)]
    sign = -1.0 if finite.size and finite.mean() < 0 else 1.0
    test = stats.threshold(sign * values, limit, clusters=groups)
    side = "above" if sign > 0 else "below"
    return core.from_test(
        "offset_seqmean", test, note=f"the engine sits {side} the trainer; {test.reason}"
    )


def check(
    seqs,
    scores,
    tolerances: dict[str, float],
    clip,
    min_tokens: int,
    semantics: str = "processed",
    sampling=None,
) -> tuple[core.Verdict, dict[str, Any]]:
    """Judge one engine's sampled-token logprobs against the trainer's (judge_tokens): the
    reference's scores seen under `semantics` (parity.trainer.semantics.trainer_view).
    Diagnosis: truncation_bias when the trainer is tempered and the engine's logprobs are the
    processed ones renormalised over the kept set (truncation_bias); raw_logprobs when the
    engine sits closer to the raw logprobs (skipped where raw = processed: T = 1 without
    truncation, per `sampling`); support_mismatch when the excluded-token rate fails; else
    processed_mismatch.
    """
    s = _common.sampled(seqs, [trainer_semantics.trainer_view(r, semantics) for r in scores])
    j = _judge(s, s.processed, tolerances, clip, min_tokens, seqs)
    vs_raw = metrics.summarize(s.raw, s.cand, None, clip)
    gap_proc, gap_raw = j.summary["abs_dlogp_mean"], vs_raw["abs_dlogp_mean"]
    bias = _truncation(seqs, scores, semantics, j, tolerances, clip, min_tokens)
    distinct = sampling is None or sampling.is_processed_distinct
    diagnosis, message = _diagnose(j, gap_proc, gap_raw, semantics, bias, distinct)
    shape = alignment.shifted_gaps(s.cand, s.processed)
    shifted = alignment.off_by_one(gap_proc, shape, tolerances.get("abs_dlogp_mean", np.inf))
    if j.outcome == "fail" and diagnosis != "vanished_tokens" and shifted:
        diagnosis = "off_by_one"
        message = (
            "the engine's logprobs and the trainer's are one position apart (with a scores "
            f"file, its trainer_logprob column is the usual culprit): "
            f"{alignment.message(shifted, shape, gap_proc)} ({message})"
        )
    elif diagnosis == "processed_mismatch" and _narrower(j, semantics, sampling):
        diagnosis, message = "narrower_support", _NARROWER + f" ({message})"
    detail = {
        "vs_processed": j.summary,
        "vs_raw": vs_raw,
        "semantics": semantics,
        "alignment": shape,
        "key_metric": gap_proc,
        "headline": f"|dlogp| {fmt(gap_proc)} (raw {fmt(gap_raw)})"
        + (f", {j.summary['n_ref_excluded']} excluded" if j.summary["n_ref_excluded"] else ""),
    }
    if bias is not None:
        detail["truncation"] = bias
    return core.Verdict(j.outcome, diagnosis, message, j.findings, j.preconditions), detail


_NARROWER = (
    "the engine's logprobs sit above the trainer's, one-signed (offset_seqmean), while the "
    "trainer replays top-k/top-p: the engine renormalises over a smaller set than the "
    "trainer's (a narrower top_k/top_p, or a lower temperature), so each token reads "
    "log(trainer kept mass / engine kept mass) >= 0 too high; tokens the trainer keeps outside "
    "the engine's set are never sampled, so excluded_rate cannot see it. Fix: give the engine "
    "the trainer's top_k/top_p and temperature"
)


def _narrower(j: TokenJudgement, semantics: str, sampling) -> bool:
    """The reverse of support_mismatch: a processed (replaying) trainer with truncation, the
    offset failing with the engine above the trainer, no excess of excluded tokens."""
    if (
        semantics != "processed"
        or sampling is None
        or (sampling.top_p >= 1 and sampling.top_k <= 0)
    ):
        return False
    offset = next(f for f in j.findings if f.name == "offset_seqmean")
    return offset.outcome == "fail" and "sits above" in (offset.note or "")


def _truncation(seqs, scores, semantics, j, tolerances, clip, min_tokens) -> dict | None:
    """truncation_offset where the trainer is tempered and the reference computed the kept
    mass: the residual is the engine judged against the replayed processed logprobs. None when
    not applicable (other semantics, no kept mass, nothing cut)."""
    if semantics != "tempered" or any(r.log_kept_mass is None for r in scores):
        return None
    kept = [np.asarray(r.log_kept_mass, np.float64) for r in scores]
    if not _cuts(kept):
        return None
    s = _common.sampled(seqs, scores)
    residual = _judge(s, s.processed, tolerances, clip, min_tokens, seqs)
    return truncation_offset(kept, residual, j)


def _cuts(kept: list[np.ndarray]) -> bool:
    return any(np.any(k < 0) for k in kept)


def truncation_offset(
    kept: list[np.ndarray], residual: TokenJudgement, j: TokenJudgement
) -> dict | None:
    """The truncation offset of an engine against a tempered trainer, from the log kept mass of
    each sampled token's position (`kept`, per sequence), the engine judged against tempered -
    log kept mass (`residual`) and against the tempered logprobs (`j`): {"mean_bias": mean -log
    kept mass over the sampled tokens (nats, the engine's expected excess over the trainer),
    "max_bias", "residual_abs_dlogp_mean", "residual_outcome", "matches": the residual passes
    while the tempered judgement does not}. None when top-k/top-p cut nothing. The logprobs
    category and `parity judge` (a dump's trainer_log_kept_mass column) both diagnose by it."""
    if not _cuts(kept):
        return None
    flat = np.concatenate(kept)
    return {
        "mean_bias": float(-flat.mean()),
        "max_bias": float(-flat.min()),
        "residual_abs_dlogp_mean": residual.summary["abs_dlogp_mean"],
        "residual_outcome": residual.outcome,
        "matches": residual.outcome == "pass" and j.outcome != "pass",
    }


def truncation_message(bias: dict, gap_text: str) -> str:
    """What a truncation_bias diagnosis says: the bias, the residual and the fix."""
    return (
        f"the engine returns processed logprobs renormalised over its top-k/top-p kept "
        f"set while the trainer computes tempered log_softmax(logits / T) over the full "
        f"vocabulary: every token carries a bias of -log(kept mass), mean "
        f"{fmt(bias['mean_bias'], 4)} nats (max {fmt(bias['max_bias'], 4)}); after "
        f"subtracting it the mean |dlogp| is {fmt(bias['residual_abs_dlogp_mean'], 4)} "
        f"({gap_text}). Fix: sample with top_p = 1 and top_k off for RL, or have the "
        "trainer replay the engine's support (vLLM's sampling mask where the engine "
        'offers it), or declare [reference] semantics = "processed" if the trainer '
        "replays it"
    )


def _diagnose(
    j: TokenJudgement,
    gap_proc: float,
    gap_raw: float,
    semantics: str = "processed",
    bias: dict | None = None,
    distinct: bool = True,
) -> tuple[str | None, str]:
    """truncation_bias, raw_logprobs, support_mismatch or processed_mismatch, and the message
    naming the fix."""
    gap_text = (
        f"mean |dlogp| to the trainer's {semantics} logprobs {fmt(gap_proc, 4)}, to "
        f"its raw logprobs {fmt(gap_raw, 4)}"
    )
    if not distinct:
        gap_text += (
            "; raw = processed at T = 1 without truncation: the raw-vs-processed diagnosis "
            "is skipped"
        )
    excluded, outcome = j.excluded, j.outcome
    vanished = _common.vanished_message(j.findings)
    if vanished:
        return "vanished_tokens", (
            f"tokens vanished from the means ({vanished}): an engine logprob of -inf is an "
            "infinite importance ratio, a finite fill value (-1e4, finfo.min) is a mask "
            f"written where -inf belongs ({gap_text})"
        )
    if bias is not None and bias["matches"]:
        return "truncation_bias", truncation_message(bias, gap_text)
    # Raw logprobs first: a raw-logprob engine usually also has a bf16 head, whose boundary
    # tokens the fp32 trainer may exclude; the excluded count is still reported.
    if outcome != "pass" and distinct and gap_raw < gap_proc:
        return "raw_logprobs", (
            f"the engine returns RAW logprobs ({gap_text}): the RL loss needs the "
            "processed distribution the sampler draws from; set "
            "logprobs_mode=processed_logprobs"
            + (f"; also {excluded.note}" if excluded.outcome == "fail" else "")
        )
    if excluded.outcome == "fail":
        n_excluded, n_tokens = j.summary["n_ref_excluded"], int(j.summary["n_tokens"])
        return "support_mismatch", (
            f"{_common.support_fix(n_excluded, n_tokens)} ({gap_text}; {excluded.note})"
        )
    if outcome == "fail":
        numerics = [f.note for f in j.findings if f.name == "excluded_numerics_rate"]
        return "processed_mismatch", (
            f"the engine returns processed logprobs but they differ from the reference "
            f"beyond tolerance ({gap_text}): check the lm_head dtype (lm_head category) "
            "and sampler-order differences (V0 applies min_p after top-k/top-p, V1 "
            "before)" + "".join(f"; {n}" for n in numerics if n)
        )
    if outcome != "pass":
        return None, f"inconclusive: {gap_text}"
    return None, f"logprobs match the trainer's {semantics} logprobs ({gap_text})"


CATEGORY = Logprobs()
