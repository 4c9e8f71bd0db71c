"""Category checks: turn engine samples and reference scores into a verdict with a diagnosis
that names the fix. One function per category, all returning a Verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from parity import metrics, stats
from parity.engines.base import Sequence
from parity.reference import RefScore

OUTCOMES = ("pass", "fail", "inconclusive", "unresolved")


@dataclass
class Finding:
    """One judged quantity: its measured value, the limit, the test and its outcome."""

    name: str
    outcome: str
    value: float
    limit: float | None
    test: dict[str, Any] | None = None
    note: str = ""


@dataclass
class Verdict:
    """The outcome of one scenario, with the diagnosis (a stable code) and a message that names
    the fix when the check fails."""

    outcome: str
    diagnosis: str | None
    message: str
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def combine(findings: list[Finding]) -> str:
    """fail if any finding fails, else inconclusive if any is, else pass."""
    outcomes = {f.outcome for f in findings}
    if "fail" in outcomes:
        return "fail"
    if "inconclusive" in outcomes or not findings:
        return "inconclusive"
    return "pass"


def _arrays(values: list[list[float]] | list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.float64) for v in values]


def logprob_gaps(seqs: list[Sequence], scores: list[RefScore], clip: metrics.ClipRange,
                 ) -> dict[str, Any]:
    """The candidate's logprobs against the reference's processed and raw logprobs."""
    cand = _arrays([s.logprobs for s in seqs])
    processed = _arrays([r.processed_logprob for r in scores])
    raw = _arrays([r.raw_logprob for r in scores])
    entropy = _arrays([r.entropy for r in scores])
    summary = metrics.summarize(processed, cand, entropy, clip)
    per_seq = metrics.per_sequence(processed, cand, entropy, clip)
    vs_raw = metrics.summarize(raw, cand, None, clip)
    return {"vs_processed": summary, "vs_raw": vs_raw, "per_seq": per_seq}


def check_logprobs(seqs: list[Sequence], scores: list[RefScore], tolerances: dict[str, float],
                   clip: metrics.ClipRange, min_tokens: int) -> tuple[Verdict, dict[str, Any]]:
    """Logprob semantics: the engine's sampled-token logprobs must match the reference's
    PROCESSED logprobs (the distribution the sampler draws from, which the RL loss needs).

    Findings: the per-sequence mean |dlogp| and k3 KL are judged with a one-sample bound
    (stats.threshold: pass when the upper 95% bound is within the tolerance, fail when the
    lower bound is beyond it); p99 |dlogp| is a point check. Diagnosis: when the engine sits
    closer to the reference's RAW logprobs than to its processed ones, it returns raw
    logprobs, and the fix is logprobs_mode=processed_logprobs.
    """
    gaps = logprob_gaps(seqs, scores, clip)
    summary, vs_raw, per_seq = gaps["vs_processed"], gaps["vs_raw"], gaps["per_seq"]
    findings: list[Finding] = []
    n_tokens = int(summary["n_tokens"])
    if n_tokens < min_tokens:
        findings.append(Finding("n_tokens", "inconclusive", n_tokens, min_tokens,
                                note=f"only {n_tokens} sampled tokens (< {min_tokens}): too "
                                     "little data to decide"))
    for name, per_seq_key in (("abs_dlogp_seqmean", "abs_dlogp_mean"),
                              ("kl_k3_seqmean", "kl_k3_mean")):
        limit = tolerances.get(name.replace("_seqmean", "_mean"))
        if limit is None:
            continue
        test = stats.threshold(per_seq[per_seq_key], limit)
        findings.append(Finding(name, test.outcome, summary[name], limit, test.to_dict(),
                                test.reason))
    if "abs_dlogp_p99" in tolerances:
        value = summary["abs_dlogp_p99"]
        ok = np.isfinite(value) and value <= tolerances["abs_dlogp_p99"]
        findings.append(Finding("abs_dlogp_p99", "pass" if ok else "fail", value,
                                tolerances["abs_dlogp_p99"]))
    outcome = combine(findings)
    gap_proc, gap_raw = summary["abs_dlogp_mean"], vs_raw["abs_dlogp_mean"]
    gap_text = (f"mean |dlogp| to the reference's processed logprobs {gap_proc:.4f}, to its raw "
                f"logprobs {gap_raw:.4f}")
    diagnosis, message = None, f"logprobs match the processed distribution ({gap_text})"
    if outcome != "pass":
        if gap_raw < gap_proc:
            diagnosis = "raw_logprobs"
            message = (f"the engine returns RAW logprobs ({gap_text}): the RL loss needs the "
                       "processed distribution the sampler draws from; set "
                       "logprobs_mode=processed_logprobs")
        elif outcome == "fail":
            diagnosis = "processed_mismatch"
            message = (f"the engine returns processed logprobs but they differ from the "
                       f"reference beyond tolerance ({gap_text}): check the lm_head dtype "
                       "(lm_head category) and sampler-order differences (V0 applies min_p "
                       "after top-k/top-p, V1 before)")
        else:
            message = f"inconclusive: {gap_text}"
    detail = {"vs_processed": summary, "vs_raw": vs_raw,
              "masked_tokens": int(summary.get("n_masked_tokens", 0))}
    return Verdict(outcome, diagnosis, message, findings), detail


# Metrics judged baseline vs candidate. Mismatch metrics (higher is worse) by non-inferiority,
# behaviour metrics by equivalence (TOST). Per-sequence key in metrics.per_sequence.
MISMATCH_METRICS = {"kl_k3": "kl_k3_mean", "abs_dlogp": "abs_dlogp_mean",
                    "clip_rate": "clip_rate_token"}
BEHAVIOUR_METRICS = {"entropy": "entropy_ref_mean", "reward": "reward"}


def role_metrics(seqs: list[Sequence], scores: list[RefScore], clip: metrics.ClipRange,
                 rewards: list[float] | None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One engine against the trainer: token-level summary and per-sequence values (the unit
    the statistics resample), plus the reward when there is one."""
    gaps = logprob_gaps(seqs, scores, clip)
    summary = dict(gaps["vs_processed"])
    summary["abs_dlogp_mean_vs_raw"] = gaps["vs_raw"]["abs_dlogp_mean"]
    per_seq = dict(gaps["per_seq"])
    if rewards is not None:
        per_seq["reward"] = np.asarray(rewards, dtype=np.float64)
        summary["reward_mean"] = float(np.mean(rewards)) if rewards else float("nan")
    return summary, per_seq


def model_config_diff(configs: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """Model-config values (as each engine loaded them) that differ between engines: any entry
    means the engines are not running the same model, and no comparison of them means anything."""
    keys = {k for cfg in configs.values() for k in ((cfg or {}).get("key") or {})
            if k.startswith("model.")}
    diff = {}
    for k in sorted(keys):
        values = {role: ((cfg or {}).get("key") or {}).get(k) for role, cfg in configs.items()}
        if len({json_key(v) for v in values.values()}) > 1:
            diff[k] = values
    return diff


def json_key(v: Any) -> str:
    import json

    return json.dumps(v, sort_keys=True, default=str)


def check_rl(runs: dict[str, tuple[list[Sequence], list[RefScore], list[float] | None]],
             margins: dict[str, float], clip: metrics.ClipRange, min_tokens: int,
             configs: dict[str, dict[str, Any] | None] | None = None,
             ) -> tuple[Verdict, dict[str, Any]]:
    """Baseline vs candidate on the RL metrics, each engine scored by the same trainer.

    Mismatch metrics (k3 KL, |dlogp|, token clip rate against the trainer) are judged as
    non-inferiority: the candidate may be worse than the baseline by at most the margin.
    Behaviour metrics (exact entropy of the sampled positions, reward) are judged as equivalence
    within +-margin (two one-sided tests). Per-sequence values are resampled (stats.py).
    """
    per_role, per_seq = {}, {}
    for role, (seqs, scores, rewards) in runs.items():
        per_role[role], per_seq[role] = role_metrics(seqs, scores, clip, rewards)
    findings: list[Finding] = []
    for role in ("baseline", "candidate"):
        n_tokens = int(per_role[role]["n_tokens"])
        if n_tokens < min_tokens:
            findings.append(Finding(f"{role}.n_tokens", "inconclusive", n_tokens, min_tokens,
                                    note=f"only {n_tokens} sampled tokens: too little data"))
    for name, key in MISMATCH_METRICS.items():
        if name in margins:
            t = stats.non_inferiority(per_seq["baseline"][key], per_seq["candidate"][key],
                                      margins[name])
            findings.append(Finding(name, t.outcome, t.estimate, margins[name], t.to_dict(),
                                    t.reason))
    for name, key in BEHAVIOUR_METRICS.items():
        if name in margins and key in per_seq["baseline"] and key in per_seq["candidate"]:
            t = stats.equivalence_tost(per_seq["baseline"][key], per_seq["candidate"][key],
                                       margins[name])
            findings.append(Finding(name, t.outcome, t.estimate, margins[name], t.to_dict(),
                                    t.reason))
    mismatch = model_config_diff(configs or {})
    if mismatch:
        findings.append(Finding("model_config", "fail", len(mismatch), 0,
                                note="engines loaded different model configs: " + "; ".join(
                                    f"{k}: {v}" for k, v in mismatch.items())))
    outcome = combine(findings)
    diagnosis, message = None, "candidate is no worse than the baseline on every RL metric"
    cand = per_role["candidate"]
    failed = [f.name for f in findings if f.outcome == "fail"]
    if outcome != "pass":
        message = (f"{outcome}: " + ", ".join(f"{f.name} {f.outcome} ({f.note})"
                                            for f in findings if f.outcome != "pass"))
        if mismatch:
            diagnosis = "model_mismatch"
            message += ("; the two engines are not running the same model (config as loaded "
                        "differs): fix the checkpoint/config so both read the same values")
        elif cand["abs_dlogp_mean_vs_raw"] < cand["abs_dlogp_mean"]:
            diagnosis = "raw_logprobs"
            message += ("; the candidate's logprobs sit closer to the trainer's RAW logprobs: "
                        "set logprobs_mode=processed_logprobs")
        elif failed:
            diagnosis = "rl_divergence"
    return Verdict(outcome, diagnosis, message, findings), {"per_role": per_role,
                                                            "model_config_diff": mismatch}


CHECKS = {"logprobs": check_logprobs}


def expected(verdict: Verdict, expect: str, expect_diagnosis: str | None) -> bool:
    """Whether a verdict is what the scenario expects: a pass for an ordinary scenario; for a
    negative control (expect = "fail") a failure with the expected diagnosis."""
    if expect == "pass":
        return verdict.outcome == "pass"
    return verdict.outcome == "fail" and (expect_diagnosis is None
                                          or verdict.diagnosis == expect_diagnosis)
