"""Category `logprobs`: the engine's sampled-token logprobs must be the trainer's PROCESSED
logprobs (the distribution the sampler draws from, which the RL loss needs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.categories import _common
from parity.categories.base import Category
from parity.trainer.sampler import GREEDY_EPS
from parity.verdicts import core, formulas, metrics
from parity.verdicts.fmt import fmt


class Logprobs(Category):
    name = "logprobs"
    summary = "logprob semantics: engine logprobs vs the trainer's processed logprobs"
    tolerances = {
        "abs_dlogp_mean": 0.06,
        "kl_k3_mean": 0.01,
        "abs_dlogp_p99": 0.6,
        "excluded_rate": _common.EXCLUDED_RATE_DEFAULT,
    }
    diagnoses = {
        "support_mismatch": "the engine samples tokens the trainer's processed distribution "
        "excludes: align top_k/top_p/min_p and the tie rule",
        "raw_logprobs": "set logprobs_mode=processed_logprobs",
        "processed_mismatch": "check the lm_head dtype (lm_head category) and sampler order",
    }
    findings = {
        "abs_dlogp_seqmean": "bound",
        "kl_k3_seqmean": "bound",
        "abs_dlogp_p99": "bound",
        "excluded_rate": "bound",
        **_common.VANISHED,
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
        elif not sampling.is_processed_distinct:
            problems.append(
                (
                    path,
                    "sampling",
                    "a logprobs check needs temperature != 1 or "
                    "top_p < 1 or top_k > 0: otherwise raw and "
                    "processed logprobs are equal and the check "
                    "cannot fail",
                )
            )
        return {}, problems

    def judge(self, res, refs):
        sc = res.scenario
        seqs = res.runs["candidate"].sequences
        scores = refs.get(res.model_path, sc.head_dtype, res.runs["candidate"]).score(
            [(s.prompt_token_ids, s.token_ids) for s in seqs], sc.sampling
        )
        return check(seqs, scores, sc.tolerances, sc.clip, sc.min_tokens)


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
) -> TokenJudgement:
    """Per-sequence logprobs of an engine (cand) judged against the trainer's (ref).

    Findings: per-sequence mean |dlogp| and k3 KL by a one-sample bound (pass when the upper
    95% bound is within the tolerance, fail when the lower one is beyond it; the unit is the
    prompt when prompts have several samples), the p99 |dlogp|, the excluded-token rate
    (ties at the cut not counted when boundary_tie is given), and two count limits of 0:
    engine_neginf (engine logprob -inf) and absurd_logprob (a finite logprob below
    metrics.ABSURD_LOGPROB on either side). Precondition: at least
    `min_tokens` tokens. The category's check and `parity judge` both judge by this.
    """
    summary, per_seq = _common.gaps(ref, cand, clip, entropy, boundary_tie)
    groups = _common.clusters(prompt_ids)
    findings = _common.threshold_findings(per_seq, summary, tolerances, groups)
    findings += _common.vanished_findings(ref, cand, int(summary["n_tokens"]), words)
    findings.append(_common.excluded_finding(per_seq, summary, tolerances, groups, words))
    pre = [_common.tokens_precondition(int(summary["n_tokens"]), min_tokens, words.tokens)]
    return TokenJudgement(summary, per_seq, findings, pre, core.combine(findings, pre))


def check(
    seqs,
    scores,
    tolerances: dict[str, float],
    clip,
    min_tokens: int,
) -> tuple[core.Verdict, dict[str, Any]]:
    """Judge one engine's sampled-token logprobs against the reference's processed ones
    (judge_tokens). Diagnosis: raw_logprobs when the engine sits closer to the raw logprobs;
    support_mismatch when the excluded-token rate fails; else processed_mismatch.
    """
    s = _common.sampled(seqs, scores)
    j = judge_tokens(
        s.processed,
        s.cand,
        tolerances,
        clip,
        min_tokens,
        entropy=s.entropy,
        boundary_tie=s.boundary_tie,
        prompt_ids=[q.prompt_index for q in seqs],
    )
    vs_raw = metrics.summarize(s.raw, s.cand, None, clip)
    gap_proc, gap_raw = j.summary["abs_dlogp_mean"], vs_raw["abs_dlogp_mean"]
    diagnosis, message = _diagnose(j, gap_proc, gap_raw)
    detail = {
        "vs_processed": j.summary,
        "vs_raw": vs_raw,
        "key_metric": gap_proc,
        "headline": f"|dlogp| {fmt(gap_proc)} (raw {fmt(gap_raw)})"
        + (f", {j.summary['n_ref_excluded']} excluded" if j.summary["n_ref_excluded"] else ""),
    }
    return core.Verdict(j.outcome, diagnosis, message, j.findings, j.preconditions), detail


def _diagnose(j: TokenJudgement, gap_proc: float, gap_raw: float) -> tuple[str | None, str]:
    """raw_logprobs, support_mismatch or processed_mismatch, and the message naming the fix."""
    gap_text = (
        f"mean |dlogp| to the reference's processed logprobs {fmt(gap_proc, 4)}, to "
        f"its raw logprobs {fmt(gap_raw, 4)}"
    )
    excluded, outcome = j.excluded, j.outcome
    # Raw logprobs first: a raw-logprob engine usually also has a bf16 head, whose boundary
    # tokens the fp32 trainer may exclude; the excluded count is still reported.
    if outcome != "pass" and gap_raw < gap_proc:
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
        return "processed_mismatch", (
            f"the engine returns processed logprobs but they differ from the reference "
            f"beyond tolerance ({gap_text}): check the lm_head dtype (lm_head category) "
            "and sampler-order differences (V0 applies min_p after top-k/top-p, V1 "
            "before)"
        )
    if outcome != "pass":
        return None, f"inconclusive: {gap_text}"
    return None, f"logprobs match the processed distribution ({gap_text})"


CATEGORY = Logprobs()
