"""Category `weight_update`: new weights pushed into a live engine (between calls, over a warm
prefix cache, mid-generation), its samples judged against a trainer holding both checkpoints
(parity.trainer.updates), and which in-flight semantics (keep the KV, recompute) it implements."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from parity.categories import _common
from parity.categories._update_between import judge_between
from parity.categories._update_drive import drive, transfer_setting_problems
from parity.categories._update_inflight import judge_inflight
from parity.categories._update_nopause import FIX as MIXED_FIX
from parity.categories._update_nopause import judge_nopause
from parity.categories.base import Category, choice
from parity.trainer import hybrids
from parity.trainer.update_spec import (
    DEFAULT_TOLERANCE,
    FP32_TOLERANCE,
    PROBES,
    parse_update,
    tolerance,
)
from parity.trainer.updates import SplitScorer
from parity.verdicts import core


def _engine_dtype(er) -> str | None:
    value = str(((er.effective_config or {}).get("key") or {}).get("dtype") or "")
    name = value.replace("torch.", "")
    return name if name in ("float32", "bfloat16", "float16") else None


def update_summary(rec: dict) -> dict[str, Any]:
    """Latency and version lag of one update record, for the report."""
    lags = [x for x in rec.get("lag_tokens") or [] if x is not None]
    return {
        "latency_s": rec.get("latency_s"),
        "pause_s": rec.get("pause_s"),
        "load_s": rec.get("load_s"),
        "resume_s": rec.get("resume_s"),
        "version_before": rec.get("version_before"),
        "version_after": rec.get("version"),
        "via": rec.get("via"),
        "mechanism": rec.get("mechanism"),
        "cache_cleared": rec.get("cache_cleared"),
        "reprocess_s": rec.get("reprocess_s"),
        "evidence_s": rec.get("evidence_s"),
        "checksums": rec.get("checksums"),
        "buckets": rec.get("buckets"),  # via tensors / transfer: [{tensors, mb, load_s}]
        "endpoints": rec.get("endpoints"),
        "lag_tokens_mean": float(np.mean(lags)) if lags else None,
        "lag_tokens_max": int(max(lags)) if lags else None,
    }


def _ms(v) -> str:
    return "n/a" if v is None else f"{1000 * v:.1f}"


def _timing_text(s: dict) -> str:
    parts = ", ".join(
        f"{k} {_ms(s[f'{k}_s'])}"
        for k in ("pause", "load", "resume")
        if s.get(f"{k}_s") is not None
    )
    text = f"update latency {_ms(s['latency_s'])} ms" + (f" ({parts})" if parts else "")
    if s["lag_tokens_mean"] is not None:
        text += (
            f"; version lag {s['lag_tokens_mean']:.2f} tokens per request (max "
            f"{s['lag_tokens_max']}) sampled under the old weights after the update was "
            "requested"
        )
    return text


def judge(res, refs) -> tuple[core.Verdict, dict[str, Any]]:
    """`_judge` with a trainer holding the old and the new checkpoint; its model time counts
    as the run's reference time (References.add_seconds)."""
    sc, er = res.scenario, res.runs["candidate"]
    scorer = SplitScorer(res.model_path, er.extra["target"], sc.head_dtype, _engine_dtype(er))
    try:
        return _kept_old(*_judge(res, scorer), getattr(scorer, "kept_old", None))
    finally:
        if hasattr(refs, "add_seconds"):
            refs.add_seconds(
                "update trainer (old and new checkpoints)",
                getattr(scorer, "seconds", 0.0),
                getattr(scorer, "tokens", 0),
            )


def _kept_old(verdict: core.Verdict, detail: dict, kept: list[str] | None):
    """An incomplete update checkpoint: the tensors it lacks against the model's own list
    (transformers' missing keys, parity.trainer.loading.load_update) as the count-limit finding
    `missing_tensors` (at most 0). The engine was judged against what its reload makes of such a
    checkpoint (old values for the missing tensors, new for the rest: the trainer's new weights
    hold exactly that), so the verdict also says whether it did that; a failure becomes the
    diagnosis `incomplete_checkpoint` unless the verdict already failed otherwise."""
    if not kept:
        return verdict, detail
    detail["kept_old_tensors"] = kept
    shown = ", ".join(kept[:8]) + (f" and {len(kept) - 8} more" if len(kept) > 8 else "")
    verdict.findings.append(
        core.count_limit(
            "missing_tensors",
            len(kept),
            0,
            note=f"tensors the pushed checkpoint lacks: {shown}",
        )
    )
    what = (
        f"the update checkpoint lacks {len(kept)} tensor(s) the model has ({shown}): the "
        "engine keeps their old values on reload, and it was judged against the new weights "
        "with the old values there"
    )
    was, message = verdict.outcome, verdict.message
    verdict.recombine()
    if was == "fail":
        verdict.message += f"; {what}"
    elif verdict.outcome == "fail":
        verdict.diagnosis = "incomplete_checkpoint"
        verdict.message = (
            f"{what} (the engine did: {message}); export every tensor of the model, or "
            "those tensors never change in the engine"
        )
    return verdict, detail


def _judge(res, scorer: SplitScorer) -> tuple[core.Verdict, dict[str, Any]]:
    """The scenario's verdict (outcome, diagnosis, findings) and detail (gaps, latency, lag).

    Diagnoses: no_effect (the engine does not compute with the new weights: still the old ones,
    or a mix when only part of the update landed), stale_prefix_cache (cached prompt KV from
    before the update), semantics_mismatch (in-flight requests continue with the other semantics
    than expected), wrong_version_labels, wrong_mode (wait/abort sampled in-flight tokens under
    the new weights), reference_mismatch (the engine did not match the old weights before the
    update, so nothing after it can be judged), mixed_weights (nopause: tokens sampled from a
    mix of old and new weights).
    """
    sc = res.scenario
    er = res.runs["candidate"]
    probe, spec = sc.options["probe"], sc.options["update"]
    tol = tolerance(sc.tolerances, scorer.dtype)
    summary = update_summary(er.extra.get("update") or {})
    detail: dict[str, Any] = {
        "probe": probe,
        "update": summary,
        "spec": asdict(spec),
        "target": er.extra["target"],
        "reference_dtype": scorer.dtype or "checkpoint",
        "tolerance": tol,
    }
    n_tokens = sum(len(s.token_ids) for s in er.sequences)
    pre = [
        core.at_least(
            "n_tokens",
            n_tokens,
            sc.min_tokens,
            f"only {n_tokens} sampled tokens (< {sc.min_tokens})",
        )
    ]
    if probe == "inflight":
        verdict = judge_inflight(sc, er, scorer, tol, detail, pre)
    elif probe == "nopause":
        verdict = judge_nopause(sc, er, scorer, tol, detail, pre)
    else:
        verdict = judge_between(sc, er, scorer, tol, detail, pre)
    engine = [
        np.asarray(s.logprobs, np.float64)
        for s in er.sequences + list(er.extra.get("before") or [])
    ]
    verdict = _common.with_vanished(verdict, engine, sum(e.size for e in engine))
    verdict.message += "; " + _timing_text(summary)
    gaps = [
        (k.removeprefix("abs_dlogp_").replace("_vs_", " vs "), v)
        for k, v in detail.items()
        if k.startswith(("abs_dlogp_after", "abs_dlogp_post")) and isinstance(v, float)
    ]
    detail["headline"] = ", ".join(f"|dlogp| {k} {v:.3g}" for k, v in gaps[:3]) or probe
    detail["key_metric"] = gaps[0][1] if gaps else None
    if probe == "nopause":  # the count V0 and V1 are compared on
        mix = detail["mixing"]
        detail["key_metric"] = mix["mixed"]
        detail["headline"] = (
            f"{mix['mixed']} of {mix['tokens']} tokens from mixed weights "
            f"({mix['by_kind']['hybrid']} from hybrid weights)"
        )
    rec = er.extra.get("update") or {}
    _worker_evidence(verdict, detail, rec, er.extra.get("pushed"))
    inplace = rec.get("skipped")
    if inplace:
        detail["inplace_skipped"] = inplace
        verdict.message += (
            f"; in-place copy could not reach {len(inplace)} parameter(s) (their "
            "storage was replaced at load, e.g. emptied by the CPU GEMM repack)"
        )
    return verdict, detail


def _worker_evidence(verdict: core.Verdict, detail: dict, rec: dict, pushed) -> None:
    """The worker's own check (parity.engines.vllm_evidence: each module's computation vs its
    parameters vs the checkpoint) as a finding: `worker_stale_modules`, the modules computing
    (compute_stale) or holding (param_stale) something other than the pushed checkpoint, at
    most 0. A failure becomes the diagnosis `worker_stale` unless the verdict already failed."""
    evidence = rec.get("evidence")
    if evidence is None and not rec.get("evidence_error"):
        return
    detail["worker_evidence"] = {
        "evidence": evidence,
        "error": rec.get("evidence_error"),
        "reprocessed": rec.get("reprocessed"),
        "pushed": pushed,
    }
    if rec.get("reprocessed"):
        verdict.message += f"; re-processed after the reload: {', '.join(rec['reprocessed'])}"
    if evidence is None:
        return
    compute = list(evidence.get("compute_stale") or [])
    param = list(evidence.get("param_stale") or [])
    stale = compute + param
    shown = ", ".join(stale[:5]) + (f" (+{len(stale) - 5})" if len(stale) > 5 else "")
    finding = core.count_limit(
        "worker_stale_modules",
        len(stale),
        0,
        evidence.get("modules_checked"),
        note=f"modules not computing the pushed checkpoint: {shown or 'none'}",
    )
    verdict.findings.append(finding)
    if finding.outcome != "fail":
        return
    what = (
        f"worker evidence: {len(compute)} module(s) with the parameters updated but the "
        f"computation stale, {len(param)} with stale parameters ({shown})"
    )
    was = verdict.outcome
    verdict.recombine()
    if was == "fail":
        verdict.message += f"; {what}"
    elif verdict.outcome == "fail":
        verdict.diagnosis, verdict.message = "worker_stale", f"{what} ({verdict.message})"


class WeightUpdate(Category):
    name = "weight_update"
    summary = "inflight weight updates: takes effect, stale prefix cache, keep vs recompute"
    fields = {
        "probe": f"one of {', '.join(PROBES)}",
        "update": "the update: target, seed, scale, train_steps, lr, via, bucket_mb, backend, "
        "mode, clear_cache, after_tokens, expect_semantics, ignore_eos, context_tokens, "
        "stale_layers, buckets, late_prompts, pause, mixed_tokens_limit",
    }
    # abs_dlogp_mean: bf16/fp16 engines; abs_dlogp_mean_fp32: fp32 ones (update_spec.tolerance).
    tolerances = {"abs_dlogp_mean": DEFAULT_TOLERANCE, "abs_dlogp_mean_fp32": FP32_TOLERANCE}
    diagnoses = {
        "no_effect": "load through the engine's reload path (collective_rpc('reload_weights'))",
        "stale_prefix_cache": "disable prefix caching or reset it at every update",
        "semantics_mismatch": "do not reset the cache while requests run (keep), or expect "
        "recompute",
        "wrong_version_labels": "the engine's weight-version labels are off by a token",
        "wrong_mode": "wait/abort must not sample in-flight tokens under the new weights",
        "reference_mismatch": "fix the model, dtype and logprobs mode first",
        "token_stream": "the pause lost or repeated a token: resume requests from their last "
        "sampled token",
        "mixed_weights": MIXED_FIX,
        "incomplete_checkpoint": "export every tensor of the model in the pushed checkpoint "
        "(the engine keeps the old values of those it lacks)",
        "worker_stale": "the engine's modules do not all compute the pushed weights: re-process "
        "them after the reload (PARITY_RELOAD_REPROCESS=1) and load through reload_weights, "
        "not by writing parameters in place",
        **hybrids.FIXES,
        "vanished_tokens": _common.VANISHED_FIX,
    }
    findings = {
        "abs_dlogp_before_vs_old": "bound",
        "abs_dlogp_after_vs_new": "bound",
        "abs_dlogp_pre_vs_old": "bound",
        "abs_dlogp_post_vs_keep": "bound",
        "abs_dlogp_post_vs_recompute": "bound",
        "post_update_tokens": "count_limit",
        "version_labels": "count_limit",
        "stale_components": "count_limit",
        "stale_share": "bound",
        "token_stream": "count_limit",
        "worker_stale_modules": "count_limit",
        "missing_tensors": "count_limit",
        "abs_dlogp_vs_labels": "bound",
        "mixed_weight_tokens": "count_limit",
        **_common.VANISHED,
    }
    key_metric_name = (
        "mean |dlogp| after the update to the expected weights (nopause: tokens sampled from "
        "mixed weights)"
    )
    reuses_generations = False  # the generation before an update fills the prefix cache
    scores_refusal = (
        "its trainer holds the old and the new checkpoint and scores across the "
        "update (parity.trainer.updates.SplitScorer), a scores file holds one checkpoint"
    )

    def parse(self, data, sampling, path):
        problems = []
        probe = choice(
            data, "probe", PROBES, None, path, problems, "a weight_update scenario needs a probe: "
        )
        update, found = parse_update(data.get("update"), path)
        return {"probe": probe, "update": update}, problems + found

    def check_settings(self, scenario, path):
        return transfer_setting_problems(scenario, path)

    def served_refusal(self, options):
        # Over HTTP an update is a checkpoint on disk loaded between requests (/pause,
        # /collective_rpc reload_weights, /resume: parity/engines/openai_updates.py).
        if options.get("probe") in ("inflight", "nopause"):
            return (
                f"the {options.get('probe')} probe updates after a given number of tokens of every "
                "running request, which needs parity's step loop inside the engine; over "
                "HTTP only takes_effect and stale_cache run: run it on an in-process engine"
            )
        update = options.get("update")
        if update is not None and update.via != "reload":
            return (
                f"update.via = {update.via!r} writes into the live parameters from inside "
                "the engine's worker; a server has no endpoint for it (/collective_rpc "
                "takes a method name and string arguments): run it on an in-process engine"
            )
        return None

    def drive(self, engine, res, role, prompts, log):
        drive(engine, res, role, prompts, log)

    def judge(self, res, refs):
        return judge(res, refs)


CATEGORY = WeightUpdate()
