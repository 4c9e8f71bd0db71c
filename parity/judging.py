"""`parity judge`: a per-token table made elsewhere (parity.data.dumps) judged by the logprobs
category's check, trainer = reference and engine = candidate, with its own diagnosis and
per-weight-version breakdown; report.json data (rendered by parity.report.judge_report)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.categories import _common, logprobs
from parity.categories.logprobs import Logprobs, TokenJudgement, judge_tokens
from parity.data import dumps
from parity.report.build import EXIT_DIVERGENCE, EXIT_OK, EXIT_UNRESOLVED, provenance
from parity.report.build import clean as _clean
from parity.report.frameworks import apply_gates
from parity.run.scenario import DEFAULT_MIN_TOKENS
from parity.verdicts import alignment, core, formulas, frameworks, metrics
from parity.verdicts.fmt import fmt

TOLERANCES = dict(Logprobs.tolerances)  # abs_dlogp_mean, kl_k3_mean, abs_dlogp_p99, excluded_rate
# A gap is a shift rather than noise when its signed mean carries most of its mean size.
ONE_SIGNED = 0.8
# A shift that grows with the token's logprob (slope of engine - trainer on trainer) is a
# temperature applied on one side: log softmax(z / T) ~ log softmax(z) / T + c per position.
SLOPE = 0.1
DIAGNOSES = {
    "vanished_tokens": _common.VANISHED_FIX,
    "off_by_one": "save the engine's logprob of token t at position t (the trainer's alignment)",
    "truncation_bias": Logprobs.diagnoses["truncation_bias"],
    "support_mismatch": "align top_k/top_p/min_p between the engine and the trainer's scoring",
    "systematic_offset": "apply the same temperature/top-k/top-p on both sides (engine: "
    "processed logprobs, e.g. vLLM logprobs_mode=processed_logprobs)",
    "heavy_tail": "compute the lm_head / logits in fp32 on both sides",
    "numeric_mismatch": "check the lm_head dtype, kernels, and that both sides hold the same "
    "weights (weight_version)",
}
# How the findings name a dump's tokens (the category's: "sampled tokens ... outside the
# trainer's top-k/top-p support").
SCORED = _common.Words("scored tokens", "have trainer logprob -inf while the engine's is finite")
VERSION_KEYS = (
    "n_seqs",
    "n_tokens",
    "abs_dlogp_mean",
    "abs_dlogp_p99",
    "kl_k3_mean",
    "kl_k1_mean",
    "n_ref_excluded",
)


@dataclass
class Judged:
    group: dumps.Group
    verdict: core.Verdict
    detail: dict[str, Any]


def options(
    tolerance_items: list[str],
    clip_low: float | None = None,
    clip_high: float | None = None,
    min_tokens: int | None = None,
) -> tuple[dict[str, float], formulas.ClipRange | None, int, list[tuple[str, str, str]]]:
    """The tolerances (defaults with `--tolerance name=value` applied), the clip range (None:
    formulas.ClipRange's default end), the minimum of tokens (None: the scenarios' default) and
    every problem with them."""

    tolerances, problems = dict(TOLERANCES), []
    for item in tolerance_items:
        name, sep, value = (s.strip() for s in item.partition("="))
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or name not in TOLERANCES:
            problems.append(
                (
                    "--tolerance",
                    name or item,
                    f"use name=value with name one of {', '.join(TOLERANCES)}",
                )
            )
        elif not (math.isfinite(number) and number >= 0):
            problems.append(("--tolerance", name, f"{value!r}: expected a number >= 0"))
        else:
            tolerances[name] = number
    clip, default = None, formulas.ClipRange()
    try:
        clip = formulas.ClipRange(
            default.eps_low if clip_low is None else clip_low,
            default.eps_high if clip_high is None else clip_high,
        )
    except ValueError as exc:
        problems.append(("--clip-low/--clip-high", "value", str(exc)))
    min_tokens = DEFAULT_MIN_TOKENS if min_tokens is None else min_tokens
    if min_tokens < 1:
        problems.append(("--min-tokens", "value", f"{min_tokens}: must be >= 1"))
    return tolerances, clip, min_tokens, problems


def judge(
    dump: dumps.Dump,
    tolerances: dict[str, float],
    clip: formulas.ClipRange,
    min_tokens: int,
    gates: list[str] = (),
) -> list[Judged]:
    """Each group judged (judge_group), with its trainer frameworks' numbers and the gates
    asked for (with_frameworks)."""
    return [
        with_frameworks(Judged(g, *judge_group(g, tolerances, clip, min_tokens)), gates)
        for g in dump.groups
    ]


def judge_group(
    g: dumps.Group, tolerances: dict[str, float], clip: formulas.ClipRange, min_tokens: int
) -> tuple[core.Verdict, dict[str, Any]]:
    """One group's verdict and detail.

    Findings and precondition: the logprobs category's (logprobs.judge_tokens), the trainer as
    reference and the engine as candidate, over the scored tokens. Diagnosis: vanished_tokens
    (an engine -inf or a fill value for -inf), off_by_one (the gaps collapse with the engine
    read one position later or earlier), truncation_bias (with a trainer_log_kept_mass column:
    the gap is the truncation offset, logprobs.truncation_offset; without it, a one-signed
    engine-above gap says it is a likely cause), support_mismatch (excluded tokens), systematic_offset (a one-signed gap), heavy_tail (only the p99 fails),
    else numeric_mismatch; the worst weight version is named when there are several.
    """
    j = _judge_against(g, g.trainer, tolerances, clip, min_tokens)
    summary, shape = j.summary, _shape(g)
    versions = by_version(g, clip)
    worst = _worst(versions)
    bias = _truncation(g, j, tolerances, clip, min_tokens)
    diagnosis, message = _diagnose(j, shape, tolerances.get("abs_dlogp_mean", math.inf), bias)
    if g.trainer_log_kept_mass is None and diagnosis in ("systematic_offset", "numeric_mismatch"):
        message += _truncation_hint(j)
    if worst and len(versions) > 1:
        best = min(versions, key=lambda v: _nan_last(versions[v]["abs_dlogp_mean"]))
        message += (
            f"; worst weight version {worst}: mean |dlogp| "
            f"{fmt(versions[worst]['abs_dlogp_mean'], 4)} over "
            f"{versions[worst]['n_tokens']} tokens (best, version {best}: "
            f"{fmt(versions[best]['abs_dlogp_mean'], 4)})"
        )
    detail = {
        "metrics": summary,
        "shape": shape,
        "truncation": bias,
        "per_weight_version": versions,
        "worst_weight_version": worst,
        "key_metric": summary["abs_dlogp_mean"],
        "headline": f"|dlogp| {fmt(summary['abs_dlogp_mean'])}, offset {fmt(shape['offset_mean'])}",
    }
    return core.Verdict(j.outcome, diagnosis, message, j.findings, j.preconditions), detail


def _judge_against(g: dumps.Group, trainer, tolerances, clip, min_tokens) -> TokenJudgement:
    """The group's engine logprobs judged against `trainer` (per sequence) by the logprobs
    category's judge_tokens."""
    return judge_tokens(
        trainer,
        g.engine,
        tolerances,
        clip,
        min_tokens,
        entropy=g.entropy,
        boundary_tie=g.boundary_tie,
        prompt_ids=g.prompt_ids,
        words=SCORED,
    )


def _truncation(g: dumps.Group, j: TokenJudgement, tolerances, clip, min_tokens) -> dict | None:
    """logprobs.truncation_offset from the dump's trainer_log_kept_mass column (the trainer
    column taken as the tempered logprobs, the residual judged against trainer - log kept mass);
    None without the column, with a token whose kept mass is unknown (NaN), or nothing cut."""
    kept = g.trainer_log_kept_mass
    if kept is None or any(np.isnan(k).any() for k in kept):
        return None
    replayed = [t - k for t, k in zip(g.trainer, kept)]
    residual = _judge_against(g, replayed, tolerances, clip, min_tokens)
    return logprobs.truncation_offset(kept, residual, j)


def _truncation_hint(j: TokenJudgement) -> str:
    """Where offset_seqmean fails with the engine above the trainer and the dump carries no
    kept mass: truncation bias is a likely cause, and the column that would confirm it."""
    offset = next(f for f in j.findings if f.name == "offset_seqmean")
    if offset.outcome != "fail" or "sits above" not in (offset.note or ""):
        return ""
    return (
        "; truncation bias is a likely cause: an engine sampling with top_p < 1 or top_k > 0 "
        "returns logprobs renormalised over the kept set, -log(kept mass) above a trainer's "
        "log_softmax(logits / T) over the full vocabulary; add a trainer_log_kept_mass column "
        "(log of the tempered probability mass top-k/top-p keep at each position) to confirm "
        "it (docs/judge.md)"
    )


def _shape(g: dumps.Group) -> dict[str, float]:
    """How engine - trainer behaves over the tokens both give a finite logprob: its mean and
    sd (a shift shows as |mean| ~ mean |gap|), and its slope on the trainer logprob."""
    eng, tr = np.concatenate(g.engine), np.concatenate(g.trainer)
    ok = np.isfinite(eng) & np.isfinite(tr)
    d, tr = eng[ok] - tr[ok], tr[ok]
    if not d.size:
        return {"offset_mean": math.nan, "offset_sd": math.nan, "slope": math.nan}
    var = float(np.var(tr))
    slope = float(np.mean((d - d.mean()) * (tr - tr.mean())) / var) if var > 0 else math.nan
    out = {"offset_mean": float(d.mean()), "offset_sd": float(d.std()), "slope": slope}
    return out | alignment.shifted_gaps(g.engine, g.trainer)


def _diagnose(
    j: TokenJudgement, shape: dict[str, float], tolerance: float, bias: dict | None = None
) -> tuple[str | None, str]:
    outcome, findings, summary, pre = j.outcome, j.findings, j.summary, j.preconditions
    gap, off, p99 = summary["abs_dlogp_mean"], shape["offset_mean"], summary["abs_dlogp_p99"]
    text = (
        f"mean |dlogp| {fmt(gap, 4)}, mean engine - trainer {fmt(off, 4)} (sd "
        f"{fmt(shape['offset_sd'], 3)}), p99 |dlogp| {fmt(p99, 4)}"
    )
    failed = {f.name for f in findings if f.outcome == "fail"}
    if outcome == "pass":
        return None, f"engine logprobs match the trainer's ({text})"
    if outcome != "fail":
        why = [p.note for p in pre if not p.met] + [
            f"{f.name}: {f.note}" for f in findings if f.outcome == "inconclusive"
        ]
        return None, f"inconclusive: {'; '.join(why)} ({text})"
    vanished = _common.vanished_message(findings)
    if vanished:
        return "vanished_tokens", f"{vanished} ({text})"
    shifted = alignment.off_by_one(gap, shape, tolerance)
    if shifted:
        return "off_by_one", (
            "the engine column is shifted by one position against the trainer's: "
            f"{alignment.message(shifted, shape, gap)} ({text})"
        )
    if bias is not None and bias["matches"]:
        return "truncation_bias", logprobs.truncation_message(bias, text)
    if "excluded_rate" in failed:
        n = int(summary["n_ref_excluded"]) - int(summary.get("n_tied_excluded", 0))
        return "support_mismatch", (
            f"{n} of {int(summary['n_tokens'])} scored tokens are "
            "impossible under the trainer's distribution (logprob -inf) but were sampled by the "
            "engine: the two disagree on the support; align top_k/top_p/min_p between the "
            f"engine's sampler and the trainer's logprob computation ({text})"
        )
    if math.isfinite(off) and abs(off) >= ONE_SIGNED * gap:
        if math.isfinite(shape["slope"]) and abs(shape["slope"]) > SLOPE:
            cause = (
                f"the shift grows with the token's logprob (slope {fmt(shape['slope'])}): "
                "a temperature applied on one side only; divide the trainer's logits by "
                "the sampling temperature before log_softmax, or have the engine report "
                "logprobs of the tempered distribution"
            )
        elif off < 0:
            cause = (
                "the engine's logprobs sit below the trainer's by a near-constant amount: "
                "the engine likely returns RAW logprobs (before temperature/top-k/top-p) "
                "while the trainer scores the processed distribution; set the engine to "
                "processed logprobs (vLLM: logprobs_mode=processed_logprobs)"
            )
        else:
            cause = (
                "the engine's logprobs sit above the trainer's by a near-constant amount: "
                "the trainer likely scores without the temperature/top-k/top-p "
                "renormalisation the engine samples with (or the engine applies one the "
                "trainer does not); apply the same processing on both sides"
            )
        return "systematic_offset", f"{cause} ({text})"
    if "abs_dlogp_p99" in failed and not failed & {"abs_dlogp_seqmean", "kl_k3_seqmean"}:
        return "heavy_tail", (
            f"most tokens agree but the tail does not (max |dlogp| "
            f"{fmt(summary['abs_dlogp_max'], 4)}): typical of 16-bit logits (a bf16 lm_head on "
            f"either side) on low-probability tokens; compute the logits in fp32 on both sides "
            f"({text})"
        )
    return "numeric_mismatch", (
        f"the gaps are two-signed and beyond tolerance ({text}): the two sides compute "
        "different distributions; check the lm_head/logits dtype (fp32 on both sides), that "
        "both hold the same weights (a stale rollout policy: see weight_version), attention "
        "kernels and batch invariance"
    )


def by_version(g: dumps.Group, clip: formulas.ClipRange) -> dict[str, dict[str, Any]] | None:
    """Metrics (shown, not judged) of the tokens of each weight version ("none": unknown);
    None when no token has a version."""
    flat = np.concatenate(g.weight_version) if g.weight_version is not None else np.zeros(0)
    if not np.isfinite(flat).any():
        return None
    keys: list[Any] = sorted({int(v) for v in flat[np.isfinite(flat)]})
    keys += ["none"] if np.isnan(flat).any() else []
    out = {}
    for v in keys:
        sel = [np.isnan(w) if v == "none" else w == v for w in g.weight_version]
        tr = [t[m] for t, m in zip(g.trainer, sel) if m.any()]
        en = [e[m] for e, m in zip(g.engine, sel) if m.any()]
        s = metrics.summarize(tr, en, None, clip)
        out[str(v)] = {k: s[k] for k in VERSION_KEYS}
    return out


def _nan_last(x: float) -> float:
    return x if x == x else math.inf


def _worst(versions: dict[str, dict[str, Any]] | None) -> str | None:
    scored = {
        v: m["abs_dlogp_mean"]
        for v, m in (versions or {}).items()
        if m["abs_dlogp_mean"] == m["abs_dlogp_mean"]
    }
    return max(scored, key=scored.get) if scored else None


def with_frameworks(judged: Judged, gates: list[str] = ()) -> Judged:
    """The group's trainer frameworks' numbers (parity.verdicts.frameworks, with their gates)
    into its detail, and the gates asked for as findings of its verdict."""
    g = judged.group
    numbers = frameworks.with_gates(frameworks.compute(g.trainer, g.engine, g.entropy))
    judged.detail["frameworks"] = numbers
    if gates:
        apply_gates(judged.verdict, {frameworks.CANDIDATE: numbers}, list(gates))
    return judged


def exit_code(results: list[Judged]) -> int:
    """0 every group passes, 1 any fails, 125 otherwise (inconclusive: too little data)."""

    outcomes = {r.verdict.outcome for r in results}
    if "fail" in outcomes:
        return EXIT_DIVERGENCE
    return EXIT_OK if outcomes == {"pass"} else EXIT_UNRESOLVED


def to_json(
    dump: dumps.Dump,
    results: list[Judged],
    tolerances: dict[str, float],
    clip: formulas.ClipRange,
    min_tokens: int,
    code: int,
    run_id: str,
    gates: list[str] = (),
) -> dict[str, Any]:

    return _clean(
        {
            "kind": "judge",
            "run_id": run_id,
            "exit_code": code,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "provenance": provenance(),
            "input": {
                "file": str(dump.path),
                "resolved": str(dump.path.resolve()),
                "sha256": dump.sha256,
                "format": dump.format,
                "mapping": dump.mapping,
                "layout": dump.layout,
                "n_rows": dump.n_rows,
                "notes": dump.notes,
            },
            "tolerances": tolerances,
            "clip": {"eps_low": clip.eps_low, "eps_high": clip.eps_high},
            "min_tokens": min_tokens,
            "gates": list(gates),
            "groups": [
                {
                    "name": r.group.name,
                    "labels": r.group.labels,
                    "n_sequences": len(r.group.engine),
                    "dropped_unscored": r.group.dropped_unscored,
                    "verdict": r.verdict.to_dict(),
                    **{k: v for k, v in r.detail.items() if k != "key_metric"},
                }
                for r in results
            ],
        }
    )
