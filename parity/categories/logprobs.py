"""Category `logprobs`: the engine's sampled-token logprobs must be the trainer's PROCESSED
logprobs (the distribution the sampler draws from, which the RL loss needs)."""

from __future__ import annotations

from typing import Any

from parity.categories import _common
from parity.categories.base import Category
from parity.trainer.reference import GREEDY_EPS
from parity.verdicts import core
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


def check(
    seqs,
    scores,
    tolerances: dict[str, float],
    clip,
    min_tokens: int,
) -> tuple[core.Verdict, dict[str, Any]]:
    """Judge one engine's sampled-token logprobs against the reference's processed ones.

    Findings: per-sequence mean |dlogp| and k3 KL by a one-sample bound (pass when the upper
    95% bound is within the tolerance, fail when the lower one is beyond it; the unit is the
    prompt when prompts have several samples), the p99 |dlogp|, and the count of sampled tokens
    the reference excludes. Diagnosis: support_mismatch when tokens are excluded; raw_logprobs
    when the engine sits closer to the raw logprobs; else processed_mismatch.
    """
    gaps = _common.logprob_gaps(seqs, scores, clip)
    summary, vs_raw, per_seq = gaps["vs_processed"], gaps["vs_raw"], gaps["per_seq"]
    n_tokens = int(summary["n_tokens"])
    groups = _common.clusters(seqs)
    findings = _common.threshold_findings(per_seq, summary, tolerances, groups)
    excluded = _common.excluded_finding(per_seq, summary, tolerances, groups)
    findings.append(excluded)
    pre = [_common.tokens_precondition(n_tokens, min_tokens)]
    outcome = core.combine(findings, pre)
    gap_proc, gap_raw = summary["abs_dlogp_mean"], vs_raw["abs_dlogp_mean"]
    gap_text = (
        f"mean |dlogp| to the reference's processed logprobs {fmt(gap_proc, 4)}, to "
        f"its raw logprobs {fmt(gap_raw, 4)}"
    )
    diagnosis, message = None, f"logprobs match the processed distribution ({gap_text})"
    # Raw logprobs first: a raw-logprob engine usually also has a bf16 head, whose boundary
    # tokens the fp32 trainer may exclude; the excluded count is still reported.
    if outcome != "pass" and gap_raw < gap_proc:
        diagnosis = "raw_logprobs"
        message = (
            f"the engine returns RAW logprobs ({gap_text}): the RL loss needs the "
            "processed distribution the sampler draws from; set "
            "logprobs_mode=processed_logprobs"
            + (f"; also {excluded.note}" if excluded.outcome == "fail" else "")
        )
    elif excluded.outcome == "fail":
        diagnosis = "support_mismatch"
        message = (
            f"{_common.support_fix(summary['n_ref_excluded'], n_tokens)} ({gap_text}; "
            f"{excluded.note})"
        )
    elif outcome == "fail":
        diagnosis = "processed_mismatch"
        message = (
            f"the engine returns processed logprobs but they differ from the reference "
            f"beyond tolerance ({gap_text}): check the lm_head dtype (lm_head category) "
            "and sampler-order differences (V0 applies min_p after top-k/top-p, V1 "
            "before)"
        )
    elif outcome != "pass":
        message = f"inconclusive: {gap_text}"
    detail = {
        "vs_processed": summary,
        "vs_raw": vs_raw,
        "key_metric": gap_proc,
        "headline": f"|dlogp| {fmt(gap_proc)} (raw {fmt(gap_raw)})"
        + (f", {summary['n_ref_excluded']} excluded" if summary["n_ref_excluded"] else ""),
    }
    return core.Verdict(outcome, diagnosis, message, findings, pre), detail


CATEGORY = Logprobs()
