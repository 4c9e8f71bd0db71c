"""Category `rl`: baseline vs candidate engine on the RL metrics, each engine's samples scored
by the same trainer: mismatch metrics by non-inferiority, behaviour metrics by equivalence,
paired by prompt; plus, when the scenario asks (`direct = true`), the engine-vs-engine gap on the
same tokens (reported, not judged)."""

from __future__ import annotations

from typing import Any

import numpy as np

from parity.categories import _common, logprobs
from parity.categories._direct import semantics_specs, summarize, teacher_force
from parity.categories.base import Category, sampling_for
from parity.trainer import semantics as trainer_semantics
from parity.trainer.external import ScoresUnavailable
from parity.verdicts import core, samples, stats
from parity.verdicts.fmt import fmt

# Metrics judged baseline vs candidate. Mismatch metrics (higher is worse) by non-inferiority,
# behaviour metrics by equivalence (TOST). Per-sequence key in metrics.per_sequence.
MISMATCH_METRICS = {
    "kl_k3": "kl_k3_mean",
    "abs_dlogp": "abs_dlogp_mean",
    "clip_rate": "clip_rate_token",
    "excluded_rate": "excluded_rate",
    "excluded_numerics_rate": "excluded_numerics_rate",
}
BEHAVIOUR_METRICS = {"entropy": "entropy_ref_mean", "reward": "reward"}
# Each engine's own value of the headline metrics with its interval (metrics.intervals), the
# V0 vs V1 table that opens the report: mean of prompt means, 90% bootstrap over prompts.
ENGINE_METRICS = ("clip_rate", "kl_k3", "entropy", "reward", "abs_dlogp")
INTERVAL_CONFIDENCE = 0.9


class RL(Category):
    name = "rl"
    summary = "baseline vs candidate on clip rate, KL, |dlogp|, entropy and reward"
    # See docs/measurements.md#rl-margin-noise for the run-to-run noise they come from.
    # excluded_rate: the share of sampled tokens the trainer excludes, as in the logprobs
    # category (its tolerance there; _common.EXCLUDED_RATE_DEFAULT for the measurements), the
    # tokens within bf16 numerics of the cut apart (excluded_numerics_rate, _common.NUMERICS_SPREAD).
    margins = {
        "kl_k3": 0.005,
        "abs_dlogp": 0.01,
        "clip_rate": 0.03,
        "excluded_rate": _common.EXCLUDED_RATE_DEFAULT,
        "excluded_numerics_rate": _common.EXCLUDED_NUMERICS_RATE_DEFAULT,
        "entropy": 0.2,
        "reward": 0.2,
    }
    diagnoses = {
        "support_mismatch": "an engine samples tokens the trainer's processed distribution "
        "excludes: align top_k/top_p/min_p and the tie rule",
        "raw_logprobs": "set logprobs_mode=processed_logprobs on the candidate",
        "vanished_tokens": _common.VANISHED_FIX,
        "truncation_bias": logprobs.Logprobs.diagnoses["truncation_bias"],
        "processed_mismatch": logprobs.Logprobs.diagnoses["processed_mismatch"],
        **_common.GATE_DIAGNOSIS,
        "rl_divergence": "the candidate is worse than the baseline on an RL metric beyond the "
        "margin: bisect the setting differences (parity bisect)",
    }
    findings = {
        "kl_k3": "non_inferiority",
        "abs_dlogp": "non_inferiority",
        "clip_rate": "non_inferiority",
        "entropy": "equivalence",
        "reward": "equivalence",
        "excluded_rate": "non_inferiority",
        "excluded_numerics_rate": "non_inferiority",
        # the candidate's signed gap to a tempered trainer where top-k/top-p cut (truncation)
        "offset_seqmean": "bound",
        **_common.VANISHED,
        **_common.GATES_PAIR,
    }
    fields = {
        "direct": "true: the engine that runs second is also teacher-forced on the first one's "
        "tokens and the engine-vs-engine gap on the same tokens is reported (a metric, not "
        "judged; costs a teacher-forced pass on that engine and a tempered scoring). Default false",
    }
    key_metric_name = "kl_k3_mean (candidate)"
    scores_columns = {
        "trainer_logprob": "the trainer's logprobs both engines are judged by",
        "trainer_raw_logprob": "its raw_logprobs diagnosis",
        "entropy": "its entropy equivalence finding",
    }

    def parse(self, data, sampling, path):
        direct = data.get("direct", False)
        if not isinstance(direct, bool):
            return {"direct": False}, [(path, "direct", f"must be true or false, got {direct!r}")]
        return {"direct": direct}, []

    def roles(self, options):
        return ("candidate", "baseline")

    def drive(self, engine, res, role, prompts, log):
        er = res.runs[role]
        er.sequences = engine.generate(prompts, sampling_for(res.scenario, role))
        other = res.runs.get("baseline" if role == "candidate" else "candidate")
        wanted = res.scenario.options.get("direct", False)
        if wanted and other is not None and other.sequences:
            # The second engine of the pair scores the first one's tokens.
            er.extra["direct_of"] = other.role
            er.extra["direct_forced"] = teacher_force(
                engine, other.sequences, res.scenario.sampling
            )

    def judge(self, res, refs):
        sc = res.scenario
        runs, scores = {}, {}
        semantics = getattr(sc, "semantics", trainer_semantics.DEFAULT)
        for role in ("baseline", "candidate"):
            er = res.runs[role]
            pairs = [(s.prompt_token_ids, s.token_ids) for s in er.sequences]
            scores[role] = refs.get(res.model_path, sc.head_dtype, er).score(pairs, sc.sampling)
            # Both engines against the trainer's logprobs under the scenario's semantics.
            view = [trainer_semantics.trainer_view(r, semantics) for r in scores[role]]
            runs[role] = (er.sequences, view, res.rewards(er.sequences))
        verdict, detail = check(
            runs, sc.margins, sc.clip, sc.min_tokens, sc.sampling.is_processed_distinct
        )
        detail["semantics"] = semantics
        cand = res.runs["candidate"].sequences
        tolerances = {**logprobs.Logprobs.tolerances, **(sc.tolerances or {})}
        with_truncation(verdict, detail, cand, scores["candidate"], semantics, sc, tolerances)
        direct = _direct(res, scores, refs)
        if direct:
            detail["direct"] = direct
        return verdict, detail


def role_metrics(seqs, scores, clip, rewards) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One engine against the trainer: token-level summary and per-sequence values (the unit
    the statistics resample), plus the reward when there is one."""
    gaps = _common.logprob_gaps(seqs, scores, clip)
    summary = dict(gaps["vs_processed"])
    summary["abs_dlogp_mean_vs_raw"] = gaps["vs_raw"]["abs_dlogp_mean"]
    per_seq = dict(gaps["per_seq"])
    if rewards is not None:
        per_seq["reward"] = np.asarray(rewards, dtype=np.float64)
        summary["reward_mean"] = float(np.mean(rewards)) if rewards else float("nan")
    return summary, per_seq


def check(
    runs,
    margins: dict[str, float],
    clip,
    min_tokens: int,
    distinct: bool = True,
) -> tuple[core.Verdict, dict[str, Any]]:
    """Baseline vs candidate on the RL metrics, each engine scored by the same trainer.

    Args:
        runs: role -> (sequences, reference scores as the trainer's logprobs, per-sequence
            rewards or None).
        distinct: raw and processed logprobs differ (not T = 1 without truncation); the
            raw_logprobs diagnosis is skipped where they do not.
    Mismatch metrics (k3 KL, |dlogp|, token clip rate against the trainer) are judged as
    non-inferiority: the candidate may be worse than the baseline by at most the margin.
    Behaviour metrics (exact entropy of the sampled positions, reward) by equivalence within
    +-margin (two one-sided tests). Both engines answer the same prompts, so the comparison is
    paired by prompt: per-prompt means of each side, bootstrap over prompts. Over both engines'
    tokens: engine_neginf and absurd_logprob, count limits of 0 (diagnosis vanished_tokens).
    """
    per_role, per_seq, groups, pre, findings = {}, {}, {}, [], []
    for role, (seqs, scores, rewards) in runs.items():
        per_role[role], per_seq[role] = role_metrics(seqs, scores, clip, rewards)
        groups[role] = np.asarray([s.prompt_index for s in seqs])
        pre.append(
            core.at_least(
                f"{role}.n_tokens",
                int(per_role[role]["n_tokens"]),
                min_tokens,
                f"only {int(per_role[role]['n_tokens'])} sampled tokens: too little data",
            )
        )
    kwargs = dict(paired=True, base_clusters=groups["baseline"], cand_clusters=groups["candidate"])
    for name, key in MISMATCH_METRICS.items():
        if name in margins and all(key in per_seq[role] for role in per_seq):
            t = stats.non_inferiority(
                per_seq["baseline"][key], per_seq["candidate"][key], margins[name], **kwargs
            )
            findings.append(core.from_test(name, t))
    for name, key in BEHAVIOUR_METRICS.items():
        if name in margins and key in per_seq["baseline"] and key in per_seq["candidate"]:
            t = stats.equivalence_tost(
                per_seq["baseline"][key], per_seq["candidate"][key], margins[name], **kwargs
            )
            findings.append(core.from_test(name, t))
    findings += _common.vanished_findings(
        [np.asarray(r.processed_logprob, np.float64) for _, sc, _ in runs.values() for r in sc],
        [np.asarray(s.logprobs, np.float64) for seqs, _, _ in runs.values() for s in seqs],
        sum(int(m["n_tokens"]) for m in per_role.values()),
    )
    outcome = core.combine(findings, pre)
    diagnosis, message = None, "candidate is no worse than the baseline on every RL metric"
    cand = per_role["candidate"]
    failed = [f for f in findings if f.outcome == "fail"]
    if outcome != "pass":
        message = f"{outcome}: " + ", ".join(
            f"{f.name} {f.outcome} ({f.note})" for f in findings if f.outcome != "pass"
        )
        unmet = [p for p in pre if not p.met]
        if unmet:
            message += "; " + "; ".join(p.note for p in unmet)
        support = [f for f in failed if f.name == "excluded_rate"]
        if _common.vanished_message(findings):
            diagnosis = "vanished_tokens"
        elif distinct and cand["abs_dlogp_mean_vs_raw"] < cand["abs_dlogp_mean"]:
            diagnosis = "raw_logprobs"
            message += (
                "; the candidate's logprobs sit closer to the trainer's RAW logprobs: "
                "set logprobs_mode=processed_logprobs"
            )
        elif support:
            diagnosis = "support_mismatch"
            message += "; " + _common.support_fix(
                int(cand["n_ref_excluded"]), int(cand["n_tokens"])
            )
        elif failed:
            diagnosis = "rl_divergence"
        if not distinct:
            message += (
                "; raw = processed at T = 1 without truncation: the raw-vs-processed "
                "diagnosis is skipped"
            )
    b = per_role["baseline"]
    detail = {
        "per_role": per_role,
        "intervals": {role: engine_intervals(per_seq[role], groups[role]) for role in per_seq},
        "key_metric": cand.get("kl_k3_mean"),
        "headline": f"k3 {fmt(b.get('kl_k3_mean'))} -> {fmt(cand.get('kl_k3_mean'))}, "
        f"clip {fmt(b.get('clip_rate_token'))} -> "
        f"{fmt(cand.get('clip_rate_token'))}",
    }
    return core.Verdict(outcome, diagnosis, message, findings, pre), detail


def engine_intervals(per_seq: dict[str, np.ndarray], prompts: np.ndarray) -> dict[str, Any]:
    """One engine's headline metrics: metric -> {"mean", "ci_low", "ci_high", "confidence"},
    the mean of its prompt means with the 90% bootstrap interval over prompts (the unit the
    findings resample); a metric the engine has no values for is left out."""
    keys = {**MISMATCH_METRICS, **BEHAVIOUR_METRICS}
    out: dict[str, Any] = {}
    for name in ENGINE_METRICS:
        values = per_seq.get(keys[name])
        if values is None:
            continue
        x, _ = samples.one_side(np.asarray(values, np.float64), prompts)
        if x.size == 0:
            continue
        lo, hi = samples.bootstrap_ci(values, INTERVAL_CONFIDENCE, clusters=prompts)
        out[name] = {
            "mean": float(np.mean(x)),
            "ci_low": lo,
            "ci_high": hi,
            "confidence": INTERVAL_CONFIDENCE,
        }
    return out


def with_truncation(verdict, detail, seqs, scores, semantics, sc, tolerances) -> None:
    """The candidate judged as the logprobs category judges it (logprobs.check) where that
    finds a truncation offset to judge (a tempered trainer, top-k/top-p cutting something):
    both engines carry the same -log(kept mass) bias, so the pair's comparison cannot see it;
    the candidate's signed gap to the trainer (offset_seqmean) is added to the verdict, and a
    truncation_bias diagnosis of the logprobs check becomes the verdict's (its message and
    mean bias). Nothing where the logprobs check finds no truncation."""
    if semantics != "tempered":  # a truncation offset is only judged against a tempered trainer
        return
    lp_verdict, lp_detail = logprobs.check(
        seqs, scores, tolerances, sc.clip, sc.min_tokens, semantics, sc.sampling
    )
    if "truncation" not in lp_detail:
        return
    detail["truncation"] = lp_detail["truncation"]
    verdict.findings.append(next(f for f in lp_verdict.findings if f.name == "offset_seqmean"))
    verdict.recombine()
    own = lp_verdict.diagnosis == "truncation_bias"
    if not own and (verdict.diagnosis is not None or verdict.outcome != "fail"):
        return  # the pair's own diagnosis stands
    # truncation_bias, or only the candidate's offset fails: the logprobs check's diagnosis
    # where rl has it (processed_mismatch, raw_logprobs...), else rl_divergence; its message.
    known = lp_verdict.diagnosis in RL.diagnoses
    verdict.diagnosis = lp_verdict.diagnosis if known else "rl_divergence"
    verdict.message = (
        f"candidate against the trainer: {lp_verdict.message}; pair: {verdict.message}"
    )


def _direct(res, scores: dict, refs) -> dict[str, Any] | None:
    """The engine-vs-engine gap on the same tokens (see parity.categories._direct), when the second engine
    of the pair was teacher-forced on the first one's tokens."""
    for role, er in res.runs.items():
        forced, other_role = er.extra.get("direct_forced"), er.extra.get("direct_of")
        other = res.runs.get(other_role) if other_role else None
        if not forced or other is None:
            continue
        sampling = res.scenario.sampling
        pairs = [(s.prompt_token_ids, s.token_ids) for s in other.sequences]
        ref = {
            "raw": [r.raw_logprob for r in scores[other_role]],
            "processed": [r.processed_logprob for r in scores[other_role]],
        }
        try:
            tempered = refs.get(res.model_path, res.scenario.head_dtype, other).score(
                pairs, semantics_specs(sampling)["tempered"]
            )
            ref["tempered"] = [r.processed_logprob for r in tempered]
        except ScoresUnavailable:  # a scores file holds the scenario's sampling only
            pass
        mode = ((other.effective_config or {}).get("key") or {}).get("logprobs_mode")
        return summarize(forced, other.sequences, role, other_role, ref, mode)
    return None


CATEGORY = RL()
