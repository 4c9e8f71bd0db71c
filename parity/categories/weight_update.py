"""Category `weight_update`: pushes new weights into a live engine (between calls, over a warm
prefix cache, mid-generation) and judges its samples against a trainer holding both checkpoints
(parity.updates), including which in-flight semantics (keep the old KV, or recompute) the engine
implements."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from parity import core, stats
from parity.categories.base import Category, choice, fmt
from parity.engines.base import Sequence
from parity.updates import (DEFAULT_TOLERANCE, PROBES, SEMANTICS, SEPARATION, SplitScorer,
                            UpdateSpec, cached_boundary, parse_update, shared_context,
                            target_path)


def _block_size(er) -> int:
    raw = (er.effective_config or {}).get("raw") or {}
    return int((raw.get("cache_config") or {}).get("block_size") or 16)


def drive(engine, res, role: str, prompts: list[list[int]], log) -> None:
    """Run the scenario's probe on a live engine; fills res.runs[role] (sequences after the
    update; extra: before-update sequences, the update record, the target checkpoint). The
    engine is returned to the scenario's model afterwards, for the scenarios that follow."""
    sc, er = res.scenario, res.runs[role]
    base = res.model_path
    target = target_path(sc, base, log)
    er.extra.update(target=target, probe=sc.options["probe"])
    if getattr(engine, "checkpoint", None) not in (None, base):
        engine.update_weights(base, clear_cache=True)  # a previous scenario left other weights
    try:
        _probe(engine, sc, er, prompts, target, log)
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
        seqs, rec = engine.generate_with_update(
            prompts, sc.sampling, target, spec.after_tokens, spec.mode, spec.clear_cache,
            spec.via, spec.ignore_eos)
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
    log(f"  update {rec.get('version_before')} -> {rec.get('version')} via {spec.via}: "
        f"{1000 * rec.get('latency_s', float('nan')):.1f} ms")


# ----------------------------------------------------------------------------- judging


def _engine_dtype(er) -> str | None:
    value = str(((er.effective_config or {}).get("key") or {}).get("dtype") or "")
    name = value.replace("torch.", "")
    return name if name in ("float32", "bfloat16", "float16") else None


def _seq_means(per_seq: list[np.ndarray]) -> np.ndarray:
    return np.array([float(np.mean(x)) for x in per_seq if len(x)])


def _gap(eng: list[np.ndarray], ref: list[np.ndarray]) -> list[np.ndarray]:
    return [np.abs(np.asarray(e, dtype=np.float64) - r) for e, r in zip(eng, ref)]


def _mean(per_seq: list[np.ndarray]) -> float:
    flat = np.concatenate([x for x in per_seq if len(x)]) if any(len(x) for x in per_seq) \
        else np.zeros(0)
    return float(flat.mean()) if len(flat) else float("nan")


def _threshold(name: str, per_seq: list[np.ndarray], tol: float) -> core.Finding:
    finding = core.from_test(name, stats.threshold(_seq_means(per_seq), tol))
    finding.value = _mean(per_seq)  # the token mean, as the report's gaps are
    return finding


def _separation(name: str, a: list[np.ndarray], b: list[np.ndarray], tol: float,
                why: str) -> core.Precondition:
    """Two hypotheses are told apart only when their predictions differ by SEPARATION
    tolerances: a precondition, not a finding (closer, the data cannot decide)."""
    return core.at_least(name, _mean(_gap(a, b)), SEPARATION * tol, why)


def _effect(gap_old: float, gap_new: float) -> float:
    """0 = the engine still follows the old weights, 1 = the new ones."""
    total = gap_old + gap_new
    return float(gap_old / total) if total > 0 else float("nan")


def update_summary(rec: dict) -> dict[str, Any]:
    """Latency and version lag of one update record, for the report."""
    lags = [x for x in rec.get("lag_tokens") or [] if x is not None]
    return {"latency_s": rec.get("latency_s"), "pause_s": rec.get("pause_s"),
            "load_s": rec.get("load_s"), "resume_s": rec.get("resume_s"),
            "version_before": rec.get("version_before"), "version_after": rec.get("version"),
            "via": rec.get("via"), "mechanism": rec.get("mechanism"),
            "cache_cleared": rec.get("cache_cleared"),
            "lag_tokens_mean": float(np.mean(lags)) if lags else None,
            "lag_tokens_max": int(max(lags)) if lags else None}


def _ms(v) -> str:
    return "n/a" if v is None else f"{1000 * v:.1f}"


def _timing_text(s: dict) -> str:
    parts = ", ".join(f"{k} {_ms(s[f'{k}_s'])}" for k in ("pause", "load", "resume")
                      if s.get(f"{k}_s") is not None)
    text = f"update latency {_ms(s['latency_s'])} ms" + (f" ({parts})" if parts else "")
    if s["lag_tokens_mean"] is not None:
        text += (f"; version lag {s['lag_tokens_mean']:.2f} tokens per request (max "
                 f"{s['lag_tokens_max']}) sampled under the old weights after the update was "
                 "requested")
    return text


def judge(res, refs) -> tuple[core.Verdict, dict[str, Any]]:
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
    scorer = SplitScorer(res.model_path, er.extra["target"], sc.head_dtype, _engine_dtype(er))
    summary = update_summary(er.extra.get("update") or {})
    detail: dict[str, Any] = {"probe": probe, "update": summary, "spec": asdict(spec),
                              "target": er.extra["target"],
                              "reference_dtype": scorer.dtype or "checkpoint"}
    n_tokens = sum(len(s.token_ids) for s in er.sequences)
    pre = [core.at_least("n_tokens", n_tokens, sc.min_tokens,
                         f"only {n_tokens} sampled tokens (< {sc.min_tokens})")]
    if probe == "inflight":
        verdict = _judge_inflight(sc, er, scorer, tol, detail, pre)
    else:
        verdict = _judge_between(sc, er, scorer, tol, detail, pre)
    verdict.message += "; " + _timing_text(summary)
    gaps = [(k.removeprefix("abs_dlogp_").replace("_vs_", " vs "), v) for k, v in detail.items()
            if k.startswith(("abs_dlogp_after", "abs_dlogp_post")) and isinstance(v, float)]
    detail["headline"] = ", ".join(f"|dlogp| {k} {v:.3g}" for k, v in gaps[:3]) or probe
    detail["key_metric"] = gaps[0][1] if gaps else None
    inplace = (er.extra.get("update") or {}).get("skipped")
    if inplace:
        detail["inplace_skipped"] = inplace
        verdict.message += (f"; in-place copy could not reach {len(inplace)} parameter(s) (their "
                            "storage was replaced at load, e.g. emptied by the CPU GEMM repack)")
    return verdict, detail


def _decide(findings, pre, ordered) -> tuple[str, str | None, str]:
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


def _judge_between(sc, er, scorer: SplitScorer, tol: float, detail: dict,
                   pre: list) -> core.Verdict:
    """takes_effect and stale_cache: a generate call before the update, the same after it."""
    sampling = sc.sampling
    before, after = er.extra["before"], er.sequences
    old_b = [scorer.old(s.prompt_token_ids, s.token_ids, sampling) for s in before]
    old_a = [scorer.old(s.prompt_token_ids, s.token_ids, sampling) for s in after]
    new_a = [scorer.new(s.prompt_token_ids, s.token_ids, sampling) for s in after]
    eng_b = [s.logprobs for s in before]
    eng_a = [s.logprobs for s in after]
    gap_before = _gap(eng_b, old_b)
    gap_old, gap_new = _gap(eng_a, old_a), _gap(eng_a, new_a)
    findings = [_threshold("abs_dlogp_before_vs_old", gap_before, tol),
                _threshold("abs_dlogp_after_vs_new", gap_new, tol)]
    pre.append(_separation("old_new_separation", old_a, new_a, tol,
                           "the new weights are too close to the old ones to tell them apart: "
                           "raise update.scale"))
    g_old, g_new = _mean(gap_old), _mean(gap_new)
    effect = _effect(g_old, g_new)
    # The engine labels its own tokens; shown, not judged (it cannot contradict itself).
    version = (er.extra.get("update") or {}).get("version")
    detail.update(abs_dlogp_before_vs_old=_mean(gap_before), abs_dlogp_after_vs_old=g_old,
                  abs_dlogp_after_vs_new=g_new, effect=effect,
                  version_labels_after=sorted({v for s in after
                                               for v in (s.weight_versions or [])}),
                  version_after_update=version)
    stale_text, g_stale = "", None
    if sc.options["probe"] == "stale_cache":
        # The stale hypothesis: every whole block of the prompt served from a cache filled
        # before the update (what the engine reports it actually served is kept as evidence).
        bs = _block_size(er)
        cached = [cached_boundary(len(s.prompt_token_ids), bs) for s in after]
        stale = [scorer.score(s.prompt_token_ids, s.token_ids, c, sampling)
                 for s, c in zip(after, cached)]
        g_stale = _mean(_gap(eng_a, stale))
        pre.append(_separation(
            "stale_fresh_separation", stale, new_a, tol,
            "KV from the old weights would barely change these logprobs (prompts shorter than "
            "a cache block, or a small update): the probe cannot see a stale cache"))
        detail.update(abs_dlogp_after_vs_stale=g_stale, cached_tokens_hypothesis=cached,
                      cached_tokens_engine=[s.num_cached_tokens for s in after],
                      context_tokens=er.extra.get("context_tokens"), block_size=bs,
                      prefix_caching=((er.effective_config or {}).get("key") or {}).get(
                          "enable_prefix_caching"))
        stale_text = f", to the stale-cache prediction {g_stale:.3g}"
    gaps = (f"mean |dlogp| after the update to the new weights {fmt(g_new)}, to the old "
            f"{fmt(g_old)}{stale_text} (tolerance {tol:g}); effect {fmt(effect, 2)} (0 = old, "
            "1 = new)")
    before_bad, after_bad = (f.outcome == "fail" for f in findings)
    outcome, diagnosis, why = _decide(findings, pre, [
        (before_bad, "reference_mismatch",
         "the engine did not match the trainer on the old weights before the update, so the "
         "update cannot be judged: check the model, dtype and logprobs mode first"),
        (after_bad and g_stale is not None and g_stale < g_new, "stale_prefix_cache",
         "prefix cache reused KV from before the update: disable prefix caching or reset it "
         "(pause_generation(clear_cache=True) or reset_prefix_cache() after the load)"),
        (after_bad, "no_effect",
         "the update did not take effect: "
         + ("the engine still samples from the old weights" if g_old <= tol else
            f"the engine samples from neither the new nor the old weights (effect "
            f"{fmt(effect, 2)}): only part of the update reached the weights it computes with")
         + "; load through the engine's reload path (collective_rpc('reload_weights')) "
           "instead of writing into parameters"),
    ])
    if outcome == "pass":
        return core.Verdict("pass", None, f"the update took effect: {gaps}", findings, pre)
    return core.Verdict(outcome, diagnosis, f"{why}: {gaps}", findings, pre)


def _judge_inflight(sc, er, scorer: SplitScorer, tol: float, detail: dict,
                    pre: list) -> core.Verdict:
    """inflight: split each sequence at its weight-version labels; tokens before must match the
    old weights, tokens after the keep or the recompute prediction; the labels must put the
    update where the trainer's split fits best."""
    sampling, spec = sc.sampling, sc.options["update"]
    rec = er.extra.get("update") or {}
    old_version = rec.get("version_before")
    seqs = er.sequences
    ks = [sum(1 for v in (s.weight_versions or []) if v == old_version) for s in seqs]
    monotone = [list(s.weight_versions or []) == sorted(s.weight_versions or []) for s in seqs]
    pre_eng, pre_ref, post_eng, post_keep, post_rec, post_old = [], [], [], [], [], []
    label_bad = 0
    for s, k in zip(seqs, ks):
        p, t = s.prompt_token_ids, s.token_ids
        old = scorer.old(p, t, sampling)
        new = scorer.new(p, t, sampling)
        keep = scorer.keep(p, t, k, sampling)
        recompute = np.concatenate([old[:k], new[k:]])
        eng = np.asarray(s.logprobs, dtype=np.float64)
        pre_eng.append(eng[:k])
        pre_ref.append(old[:k])
        post_eng.append(eng[k:])
        post_keep.append(keep[k:])
        post_rec.append(recompute[k:])
        post_old.append(old[k:])
        if 0 < k < len(t):
            label_bad += _label_off(scorer, s, k, eng, old, new, sampling, tol)
    n_post = sum(len(x) for x in post_eng)
    g_keep = _mean(_gap(post_eng, post_keep))
    g_rec = _mean(_gap(post_eng, post_rec))
    g_old = _mean(_gap(post_eng, post_old))
    sep = _mean(_gap(post_keep, post_rec))
    findings = [_threshold("abs_dlogp_pre_vs_old", _gap(pre_eng, pre_ref), tol)]
    expected = spec.expect_semantics
    if spec.mode in ("wait", "abort"):
        semantics = "n/a"
        findings.append(core.count_limit("post_update_tokens", n_post, 0,
                                         note=f"mode {spec.mode} must not sample in-flight "
                                              "tokens under the new weights"))
    else:
        pre.append(core.at_least("post_update_tokens", n_post, 1,
                                 "every request finished before the update: raise max_tokens"))
        pre.append(_separation("keep_recompute_separation", post_keep, post_rec, tol,
                               "keep and recompute predict nearly the same logprobs here: "
                               "raise update.scale or update.after_tokens"))
        findings.append(_threshold(f"abs_dlogp_post_vs_{expected}",
                                   _gap(post_eng, post_keep if expected == "keep" else post_rec),
                                   tol))
        close = sep >= SEPARATION * tol
        semantics = ("keep" if g_keep < g_rec else "recompute") if close else "indistinguishable"
    findings.append(core.count_limit(
        "version_labels", label_bad, 0, len(seqs),
        note=f"{label_bad} sequence(s) whose version labels put the update at the wrong token "
             "(the trainer fits a split one token earlier or later clearly better)"))
    detail.update(semantics=semantics, abs_dlogp_pre_vs_old=_mean(_gap(pre_eng, pre_ref)),
                  abs_dlogp_post_vs_keep=g_keep, abs_dlogp_post_vs_recompute=g_rec,
                  abs_dlogp_post_vs_old=g_old, keep_recompute_separation=sep,
                  n_pre_tokens=sum(ks), n_post_tokens=n_post, labels_monotone=all(monotone),
                  tokens_before_update=ks, seen_at_request=rec.get("seen_at_request"),
                  effect=_effect(g_old, min(g_keep, g_rec)) if n_post else None)
    gaps = (f"{sum(ks)} tokens before the update, {n_post} after; after it, mean |dlogp| to "
            f"keep {fmt(g_keep)}, to recompute {fmt(g_rec)}, to the old weights {fmt(g_old)} "
            f"(keep vs recompute differ by {fmt(sep)}; tolerance {tol:g})")
    head = (f"in-flight requests continue with {semantics.upper()} semantics" if semantics
            not in ("n/a", "indistinguishable") else f"semantics {semantics} (mode {spec.mode})")
    by_name = {f.name: f for f in findings}
    post = by_name.get(f"abs_dlogp_post_vs_{expected}")
    post_bad = post is not None and post.outcome == "fail" and semantics in SEMANTICS
    outcome, diagnosis, why = _decide(findings, pre, [
        (by_name["abs_dlogp_pre_vs_old"].outcome == "fail", "reference_mismatch",
         "tokens sampled before the update do not match the old weights: check the model, "
         "dtype and logprobs mode first"),
        (post_bad and g_old < min(g_keep, g_rec), "no_effect",
         "the update did not take effect for the in-flight requests: they still sample from "
         "the old weights"),
        (post_bad, "semantics_mismatch",
         f"in-flight requests continue with {semantics.upper()} semantics, the scenario "
         f"expects {expected}" + (" (their KV was recomputed: a cache reset with running "
                                  "requests preempts them)" if semantics == "recompute" else "")),
        (by_name["version_labels"].outcome == "fail", "wrong_version_labels",
         by_name["version_labels"].note),
        (by_name.get("post_update_tokens") is not None
         and by_name["post_update_tokens"].outcome == "fail", "wrong_mode",
         by_name.get("post_update_tokens").note if by_name.get("post_update_tokens") else ""),
    ])
    if outcome == "pass":
        return core.Verdict("pass", None, f"{head}: {gaps}", findings, pre)
    return core.Verdict(outcome, diagnosis, f"{why}: {gaps}", findings, pre)


def _label_off(scorer, s: Sequence, k: int, eng, old, new, sampling, tol) -> int:
    """1 when the version labels put the update at the wrong token: a split one token earlier
    or later fits the engine's logprobs clearly better (by more than 2 * `tol` summed over the
    sequence) than the labelled split, under whichever semantics fits it best."""
    p, t = s.prompt_token_ids, s.token_ids

    def fit(kk: int) -> float:
        keep = scorer.keep(p, t, kk, sampling)
        recompute = np.concatenate([old[:kk], new[kk:]])
        return min(float(np.abs(eng - keep).sum()), float(np.abs(eng - recompute).sum()))

    labelled = fit(k)
    others = [fit(kk) for kk in (k - 1, k + 1) if 0 <= kk <= len(t)]
    return int(bool(others) and min(others) < labelled - 2 * max(tol, 1e-3))


class WeightUpdate(Category):
    name = "weight_update"
    summary = "inflight weight updates: takes effect, stale prefix cache, keep vs recompute"
    fields = {"probe": f"one of {', '.join(PROBES)}",
              "update": "the update: target, seed, scale, via, mode, clear_cache, "
                        "after_tokens, expect_semantics, ignore_eos, context_tokens"}
    tolerances = {"abs_dlogp_mean": DEFAULT_TOLERANCE}
    diagnoses = {
        "no_effect": "load through the engine's reload path (collective_rpc('reload_weights'))",
        "stale_prefix_cache": "disable prefix caching or reset it at every update",
        "semantics_mismatch": "do not reset the cache while requests run (keep), or expect "
                              "recompute",
        "wrong_version_labels": "the engine's weight-version labels are off by a token",
        "wrong_mode": "wait/abort must not sample in-flight tokens under the new weights",
        "reference_mismatch": "fix the model, dtype and logprobs mode first",
    }
    findings = {"abs_dlogp_before_vs_old": "bound", "abs_dlogp_after_vs_new": "bound",
                "abs_dlogp_pre_vs_old": "bound", "abs_dlogp_post_vs_keep": "bound",
                "abs_dlogp_post_vs_recompute": "bound", "post_update_tokens": "count_limit",
                "version_labels": "count_limit"}
    key_metric_name = "mean |dlogp| after the update to the expected weights"
    reuses_generations = False  # the generation before an update fills the prefix cache

    def parse(self, data, sampling, path):
        problems = []
        probe = choice(data, "probe", PROBES, None, path, problems,
                       "a weight_update scenario needs a probe: ")
        update, found = parse_update(data.get("update"), path)
        return {"probe": probe, "update": update}, problems + found

    def drive(self, engine, res, role, prompts, log):
        drive(engine, res, role, prompts, log)

    def judge(self, res, refs):
        return judge(res, refs)


CATEGORY = WeightUpdate()
