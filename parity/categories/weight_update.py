"""Category `weight_update`: pushes new weights into a live engine (between calls, over a warm
prefix cache, mid-generation) and judges its samples against a trainer holding both checkpoints
(parity.trainer.updates), including which in-flight semantics (keep the old KV, or recompute) the engine
implements."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import numpy as np

from parity.categories._update_judging import (
    attribute,
    attributed,
    batched,
    decide,
    effect,
    gap,
    judge_inflight,
    mean,
    separation,
    threshold,
)
from parity.categories.base import Category, choice
from parity.trainer import hybrids
from parity.trainer.updates import (
    DEFAULT_TOLERANCE,
    PROBES,
    SplitScorer,
    UpdateSpec,
    cached_boundary,
    parse_update,
    pushed_path,
    shared_context,
    target_path,
)
from parity.verdicts import core
from parity.verdicts.fmt import fmt


def _block_size(er) -> int:
    raw = (er.effective_config or {}).get("raw") or {}
    # A served engine's sections sit under its /server_info dump.
    cache = raw.get("cache_config") or (raw.get("server_info") or {}).get("cache_config") or {}
    return int(cache.get("block_size") or 16)


def drive(engine, res, role: str, prompts: list[list[int]], log) -> None:
    """Run the scenario's probe on a live engine; fills res.runs[role] (sequences after the
    update; extra: before-update sequences, the update record, the target checkpoint). The
    engine is returned to the scenario's model afterwards, for the scenarios that follow."""
    sc, er = res.scenario, res.runs[role]
    base = res.model_path
    target = target_path(sc, base, log)
    pushed = pushed_path(sc, target, base, log)  # what the engine is sent (a control: partial)
    er.extra.update(target=target, pushed=pushed, probe=sc.options["probe"])
    if getattr(engine, "checkpoint", None) not in (None, base):
        engine.update_weights(base, clear_cache=True)  # a previous scenario left other weights
    try:
        _probe(engine, sc, er, prompts, pushed, log)
    except BaseException:
        try:  # keep the original error; the engine may be gone
            engine.update_weights(base, clear_cache=True)
        except Exception:
            pass
        raise
    engine.update_weights(base, clear_cache=True)


def _probe(engine, sc, er, prompts: list[list[int]], target: str, log) -> None:
    """The engine work of one probe: generate, update, generate (or all at once in flight)."""
    spec: UpdateSpec = sc.options["update"]
    if sc.options["probe"] == "inflight":
        if sc.sampling.seed is not None:
            # The same seeded requests without a pause, just past the update point: the
            # paused streams must continue them token for token (nothing lost or repeated).
            short = replace(
                sc.sampling, max_tokens=min(sc.sampling.max_tokens, spec.after_tokens + 4)
            )
            er.extra["uninterrupted"] = engine.generate(prompts, short)
        seqs, rec = engine.generate_with_update(
            prompts,
            sc.sampling,
            target,
            spec.after_tokens,
            spec.mode,
            spec.clear_cache,
            spec.via,
            spec.ignore_eos,
        )
        er.sequences = seqs
    else:
        if sc.options["probe"] == "stale_cache":
            n = spec.context_tokens if spec.context_tokens is not None else _block_size(er)
            context = shared_context(prompts, n)
            prompts = [context + p for p in prompts]
            er.extra["context_tokens"] = len(context)
        er.extra["before"] = engine.generate(prompts, sc.sampling)
        rec = engine.update_weights(target, spec.mode, spec.clear_cache, spec.via)
        er.sequences = engine.generate(prompts, sc.sampling)
    er.extra["update"] = rec
    log(
        f"  update {rec.get('version_before')} -> {rec.get('version')} via {spec.via}: "
        f"{1000 * rec.get('latency_s', float('nan')):.1f} ms"
    )


# ----------------------------------------------------------------------------- judging


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
        return _judge(res, scorer)
    finally:
        if hasattr(refs, "add_seconds"):
            refs.add_seconds(
                "update trainer (old and new checkpoints)",
                getattr(scorer, "seconds", 0.0),
                getattr(scorer, "tokens", 0),
            )


def _judge(res, scorer: SplitScorer) -> tuple[core.Verdict, dict[str, Any]]:
    """The scenario's verdict (outcome, diagnosis, findings) and detail (gaps, latency, lag).

    Diagnoses: no_effect (the engine does not compute with the new weights: still the old ones,
    or a mix when only part of the update landed), stale_prefix_cache (cached prompt KV from
    before the update), semantics_mismatch (in-flight requests continue with the other semantics
    than expected), wrong_version_labels, wrong_mode (wait/abort sampled in-flight tokens under
    the new weights), reference_mismatch (the engine did not match the old weights before the
    update, so nothing after it can be judged).
    """
    sc = res.scenario
    er = res.runs["candidate"]
    probe, spec = sc.options["probe"], sc.options["update"]
    tol = sc.tolerances.get("abs_dlogp_mean", DEFAULT_TOLERANCE)
    summary = update_summary(er.extra.get("update") or {})
    detail: dict[str, Any] = {
        "probe": probe,
        "update": summary,
        "spec": asdict(spec),
        "target": er.extra["target"],
        "reference_dtype": scorer.dtype or "checkpoint",
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
    else:
        verdict = _judge_between(sc, er, scorer, tol, detail, pre)
    verdict.message += "; " + _timing_text(summary)
    gaps = [
        (k.removeprefix("abs_dlogp_").replace("_vs_", " vs "), v)
        for k, v in detail.items()
        if k.startswith(("abs_dlogp_after", "abs_dlogp_post")) and isinstance(v, float)
    ]
    detail["headline"] = ", ".join(f"|dlogp| {k} {v:.3g}" for k, v in gaps[:3]) or probe
    detail["key_metric"] = gaps[0][1] if gaps else None
    rec = er.extra.get("update") or {}
    evidence = rec.get("evidence")
    if evidence is not None or rec.get("evidence_error"):
        # The worker's own check: each module's computation vs its parameters vs the checkpoint.
        detail["worker_evidence"] = {
            "evidence": evidence,
            "error": rec.get("evidence_error"),
            "reprocessed": rec.get("reprocessed"),
            "pushed": er.extra.get("pushed"),
        }
        stale = (evidence or {}).get("compute_stale") or []
        if stale:
            verdict.message += (
                f"; worker evidence: parameters updated but the computation "
                f"stale in {', '.join(stale[:5])}"
                + (f" (+{len(stale) - 5})" if len(stale) > 5 else "")
            )
        if rec.get("reprocessed"):
            verdict.message += f"; re-processed after the reload: {', '.join(rec['reprocessed'])}"
    inplace = rec.get("skipped")
    if inplace:
        detail["inplace_skipped"] = inplace
        verdict.message += (
            f"; in-place copy could not reach {len(inplace)} parameter(s) (their "
            "storage was replaced at load, e.g. emptied by the CPU GEMM repack)"
        )
    return verdict, detail


def _judge_between(
    sc, er, scorer: SplitScorer, tol: float, detail: dict, pre: list
) -> core.Verdict:
    """takes_effect and stale_cache: a generate call before the update, the same after it."""
    sampling = sc.sampling
    before, after = er.extra["before"], er.sequences
    batch = batched(scorer)
    pairs_a = [(s.prompt_token_ids, s.token_ids) for s in after]
    # One call: the prompts before and after the update are the same, computed once.
    olds = batch.old_many([(s.prompt_token_ids, s.token_ids) for s in before] + pairs_a, sampling)
    old_b, old_a = olds[: len(before)], olds[len(before) :]
    new_a = batch.new_many(pairs_a, sampling)
    eng_b = [s.logprobs for s in before]
    eng_a = [s.logprobs for s in after]
    gap_before = gap(eng_b, old_b)
    gap_old, gap_new = gap(eng_a, old_a), gap(eng_a, new_a)
    findings = [
        threshold("abs_dlogp_before_vs_old", gap_before, tol),
        threshold("abs_dlogp_after_vs_new", gap_new, tol),
    ]
    pre.append(
        separation(
            "old_new_separation",
            old_a,
            new_a,
            tol,
            "the new weights are too close to the old ones to tell them apart: raise update.scale",
        )
    )
    g_old, g_new = mean(gap_old), mean(gap_new)
    share = effect(g_old, g_new)
    # The engine labels its own tokens; shown, not judged (it cannot contradict itself).
    version = (er.extra.get("update") or {}).get("version")
    detail.update(
        abs_dlogp_before_vs_old=mean(gap_before),
        abs_dlogp_after_vs_old=g_old,
        abs_dlogp_after_vs_new=g_new,
        effect=share,
        version_labels_after=sorted({v for s in after for v in (s.weight_versions or [])}),
        version_after_update=version,
    )
    stale_text, g_stale = "", None
    if sc.options["probe"] == "stale_cache":
        # The stale hypothesis: every whole block of the prompt served from a cache filled
        # before the update (what the engine reports it actually served is kept as evidence).
        bs = _block_size(er)
        cached = [cached_boundary(len(s.prompt_token_ids), bs) for s in after]
        stale = batch.score_many([(p, t, c) for (p, t), c in zip(pairs_a, cached)], sampling)
        g_stale = mean(gap(eng_a, stale))
        pre.append(
            separation(
                "stale_fresh_separation",
                stale,
                new_a,
                tol,
                "KV from the old weights would barely change these logprobs (prompts shorter than "
                "a cache block, or a small update): the probe cannot see a stale cache",
            )
        )
        detail.update(
            abs_dlogp_after_vs_stale=g_stale,
            cached_tokens_hypothesis=cached,
            cached_tokens_engine=[s.num_cached_tokens for s in after],
            context_tokens=er.extra.get("context_tokens"),
            block_size=bs,
            prefix_caching=((er.effective_config or {}).get("key") or {}).get(
                "enable_prefix_caching"
            ),
        )
        stale_text = f", to the stale-cache prediction {g_stale:.3g}"
    gaps = (
        f"mean |dlogp| after the update to the new weights {fmt(g_new)}, to the old "
        f"{fmt(g_old)}{stale_text} (tolerance {tol:g}); effect {fmt(share, 2)} (0 = old, "
        "1 = new)"
    )
    before_bad, after_bad = (f.outcome == "fail" for f in findings)
    partial = (
        after_bad
        and not before_bad
        and g_old > tol
        and not (g_stale is not None and g_stale < g_new)
    )
    att = (
        attribute(
            scorer,
            hybrids.Predictor(
                lambda pair, idx: batch.new_many([pairs_a[i] for i in idx], sampling, new=pair)
            ),
            eng_a,
            tol,
            detail,
            findings,
        )
        if partial
        else None
    )
    outcome, diagnosis, why = decide(
        findings,
        pre,
        [
            (
                before_bad,
                "reference_mismatch",
                "the engine did not match the trainer on the old weights before the update, so the "
                "update cannot be judged: check the model, dtype and logprobs mode first",
            ),
            (
                after_bad and g_stale is not None and g_stale < g_new,
                "stale_prefix_cache",
                "prefix cache reused KV from before the update: disable prefix caching or reset it "
                "(pause_generation(clear_cache=True) or reset_prefix_cache() after the load)",
            ),
            attributed(att, tol),
            (
                after_bad,
                "no_effect",
                "the update did not take effect: "
                + (
                    "the engine still samples from the old weights"
                    if g_old <= tol
                    else f"the engine samples from neither the new nor the old weights (effect "
                    f"{fmt(share, 2)}): only part of the update reached the weights it computes with"
                    + (f"; {hybrids.message(att, tol)}" if att else "")
                )
                + "; load through the engine's reload path (collective_rpc('reload_weights')) "
                "instead of writing into parameters",
            ),
        ],
    )
    if outcome == "pass":
        return core.Verdict("pass", None, f"the update took effect: {gaps}", findings, pre)
    return core.Verdict(outcome, diagnosis, f"{why}: {gaps}", findings, pre)


class WeightUpdate(Category):
    name = "weight_update"
    summary = "inflight weight updates: takes effect, stale prefix cache, keep vs recompute"
    fields = {
        "probe": f"one of {', '.join(PROBES)}",
        "update": "the update: target, seed, scale, via, mode, clear_cache, "
        "after_tokens, expect_semantics, ignore_eos, context_tokens, "
        "stale_layers",
    }
    tolerances = {"abs_dlogp_mean": DEFAULT_TOLERANCE}
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
        **hybrids.FIXES,
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
        "token_stream": "count_limit",
    }
    key_metric_name = "mean |dlogp| after the update to the expected weights"
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

    def served_refusal(self, options):
        # Over HTTP an update is a checkpoint on disk loaded between requests (/pause,
        # /collective_rpc reload_weights, /resume: parity/engines/openai_updates.py).
        if options.get("probe") == "inflight":
            return (
                "the inflight probe updates after a given number of tokens of every "
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
