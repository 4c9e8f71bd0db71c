"""The `runtime` category: the engines' effective configurations side by side, each difference
tagged with its consequence for RL (a model-config difference fails), and behavioural probes of
one engine: prefix cache cold vs warm, batch size 1 vs N, decode vs re-prefill."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from parity import metrics, stats
from parity.checks import Finding, Verdict, combine
from parity.engines.base import Sequence


# Severity of a difference: "fail" = not the same model; "rl" = changes what the RL loss sees or
# risks stale data; "numeric" = kernels/batching, logprobs move within noise; "info" = neither.
CONSEQUENCES: dict[str, tuple[str, str]] = {
    "enable_prefix_caching": ("rl", "prefix caching on: after a weight update a cache hit reuses "
                              "KV computed with the old weights (stale KV); set "
                              "enable_prefix_caching=False or reset the cache at every update"),
    "async_scheduling": ("rl", "async scheduling on: the scheduler runs a step ahead of the "
                         "model, so around a weight update tokens can come from a step-old "
                         "weight version; set async_scheduling=False"),
    "cascade_attention": ("rl", "cascade attention allowed: shared-prefix batches take another "
                          "attention path than the trainer's; set disable_cascade_attn=True"),
    "head_dtype": ("rl", "lm_head dtype differs: every logit is rounded differently, and the "
                   "trainer computes them in fp32 (see the lm_head category)"),
    "logprobs_mode": ("rl", "logprob semantics differ: the RL loss needs the processed "
                      "distribution the sampler draws from (see the logprobs category)"),
    "generation_config_defaults": ("rl", "sampling defaults from the checkpoint's "
                                   "generation_config.json apply to requests that leave them "
                                   "unset: the engines may sample different distributions"),
    "dtype": ("rl", "the engines compute in different precisions"),
    "kv_cache_dtype": ("rl", "the KV cache is stored in another dtype: attention reads rounded "
                       "keys and values"),
    "enable_chunked_prefill": ("numeric", "long prompts are prefilled in chunks: numerics differ "
                               "slightly from a one-shot prefill (prefill_consistency probe)"),
    "max_num_seqs": ("numeric", "batch composition differs: logprobs can move within batch "
                     "noise (batch_invariance probe); throughput"),
    "max_num_batched_tokens": ("numeric", "step token budget differs: batch composition and "
                               "chunking differ (batch_invariance probe); throughput"),
    "enforce_eager": ("numeric", "compiled vs eager kernels: numerics within noise expected"),
    "compilation_level": ("numeric", "compiled vs eager kernels: numerics within noise expected"),
    "cudagraph_mode": ("numeric", "CUDA graphs vs eager: numerics within noise expected"),
    "block_size": ("info", "KV block size: prefix-cache granularity only"),
    "max_model_len": ("info", "longest sequence the engine accepts"),
    "seed": ("info", "global seed: only requests without their own seed are affected (parity "
             "seeds every request)"),
}
ENGINE_IDENTITY = ("engine_impl", "vllm_version", "vllm_use_v1_env", "platform")
MODEL_CONSEQUENCE = "model config differs: the two engines are not running the same model"
# Values that carry an RL risk even when both engines share them.
RISKY = {"enable_prefix_caching": True, "async_scheduling": True, "cascade_attention": "allowed"}


# ----------------------------------------------------------------------------- config diff


def _same(a: Any, b: Any) -> bool:
    """Equality that reads [x] as x and 10000 as 10000.0 (engines spell ids and floats apart)."""
    if isinstance(a, list) and len(a) == 1:
        a = a[0]
    if isinstance(b, list) and len(b) == 1:
        b = b[0]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not (
            isinstance(a, bool) or isinstance(b, bool)):
        return bool(np.isclose(float(a), float(b), rtol=1e-9, atol=0.0))
    return a == b


def tag(key: str, base: Any, cand: Any) -> tuple[str, str]:
    """(severity, consequence) of one difference between baseline and candidate."""
    if key.startswith("model."):
        if base is None or cand is None:
            return "unknown", f"{key} could not be read on one side"
        return "fail", f"{MODEL_CONSEQUENCE} ({key}: {base!r} vs {cand!r})"
    if key in ENGINE_IDENTITY:
        return "info", "the engines being compared"
    severity, text = CONSEQUENCES.get(key, ("info", "no known consequence for RL"))
    if key in RISKY:
        risky = [role for role, v in (("baseline", base), ("candidate", cand))
                 if v == RISKY[key]]
        if not risky:
            return "info", "off or absent in both engines: no RL consequence"
        text = f"{text} (on in the {' and '.join(risky)})"
    return severity, text


def config_diff(base: dict[str, Any], cand: dict[str, Any]) -> list[dict[str, Any]]:
    """Every key whose effective value differs, with its severity and RL consequence.

    Args:
        base, cand: the "key" sections of the two engines' effective configs.
    Returns:
        [{"key", "baseline", "candidate", "severity", "consequence"}], model keys first.
    """
    rows = []
    for key in sorted(set(base) | set(cand), key=lambda k: (not k.startswith("model."), k)):
        b, c = base.get(key), cand.get(key)
        if _same(b, c):
            continue
        severity, consequence = tag(key, b, c)
        rows.append({"key": key, "baseline": b, "candidate": c, "severity": severity,
                     "consequence": consequence})
    return rows


def risks(key: dict[str, Any]) -> list[str]:
    """Settings of one engine that carry an RL risk whatever the other engine does."""
    return [k for k, v in RISKY.items() if key.get(k) == v]


def judge_config_diff(base: dict[str, Any], cand: dict[str, Any]) -> tuple[Verdict, dict]:
    """Fail when the model configs differ; otherwise pass and list the tagged differences."""
    rows = config_diff(base, cand)
    failing = [r for r in rows if r["severity"] == "fail"]
    rl = [r for r in rows if r["severity"] == "rl"]
    findings = [Finding(f"diff.{r['key']}", "fail" if r["severity"] == "fail" else "pass",
                        float("nan"), None, note=r["consequence"]) for r in rows]
    detail = {"differences": rows, "candidate_risks": risks(cand),
              "baseline_risks": risks(base),
              "headline": f"{len(rows)} differences, {len(rl)} with RL consequences"
                          + (f", {len(failing)} in the model" if failing else "")}
    if failing:
        keys = ", ".join(r["key"] for r in failing)
        return Verdict("fail", "model_config_mismatch",
                       f"{MODEL_CONSEQUENCE} ({keys}): check the checkpoint each engine loads, "
                       "its hf_overrides, and config drift between transformers versions "
                       "(rope_theta vs rope_parameters)", findings), detail
    text = "; ".join(f"{r['key']} {r['baseline']!r} -> {r['candidate']!r}: {r['consequence']}"
                     for r in rl)
    return Verdict("pass", None, "same model; " + (f"differences with RL consequences: {text}"
                                                    if rl else "no difference with an RL "
                                                               "consequence"),
                   findings), detail


# ----------------------------------------------------------------------------- probes: engine work


def _shared_prefix(prompts: list[list[int]], length: int) -> list[int]:
    """`length` tokens of real text: the prompts concatenated (repeated if short)."""
    pool = [t for p in prompts for t in p]
    while len(pool) < length:
        pool += pool
    return pool[:length]


def _generate(engine, prompts, indices, sampling) -> list[Sequence]:
    """Generate for prompts[indices] (a contiguous run) with prompt i seeded seed + i, so the
    seeds do not depend on how the prompts are batched."""
    assert indices == list(range(indices[0], indices[0] + len(indices))), "contiguous only"
    sub = [prompts[i] for i in indices]
    seqs = []
    out = engine.generate(sub, replace(sampling, seed=sampling.seed + indices[0]))
    for s in out:
        s.prompt_index = indices[s.prompt_index]
        seqs.append(s)
    return seqs


def drive(engine, res, role: str, prompts: list[list[int]], log) -> None:
    """Run the scenario's probe on one engine; probe data goes to res.runs[role].extra."""
    sc = res.scenario
    er = res.runs[role]
    key = (er.effective_config or {}).get("key", {})
    sampling = sc.sampling
    if sc.probe == "config_diff":
        # The configs were read at start; one short request shows the engine also serves.
        er.sequences = engine.generate(prompts[:1], replace(sampling, max_tokens=4, n=1))
        return
    if sc.probe == "prefix_cache":
        block = int(key.get("block_size") or 16)
        room = int(key.get("max_model_len") or 2048) - sampling.max_tokens - max(map(len, prompts))
        length = min(2 * block, room - 1)
        if length < block:
            er.extra["probe_error"] = (f"max_model_len leaves room for {room} prefix tokens, "
                                       f"less than one KV block ({block})")
            return
        shared = _shared_prefix(prompts, length)
        full = [shared + p for p in prompts]
        # One request at a time in both runs: V1 caches a block when it is allocated, so
        # requests sharing a step already share blocks, and a batch is never cold. Alone, the
        # cold run (cache reset before each request) computes every prefix itself and the warm
        # run differs from it by the cache only.
        cold, warm = [], []
        for i in range(len(full)):
            engine.reset_prefix_cache()
            cold += _generate(engine, full, [i], sampling)
        for i in range(len(full)):
            warm += _generate(engine, full, [i], sampling)
        er.sequences = cold
        er.extra.update(ref=cold, cand=warm, prefix_tokens=length)
        log(f"  prefix_cache: {len(full)} prompts sharing {length} tokens, cold then warm")
        return
    if sc.probe == "batch_invariance":
        single = []
        for i in range(len(prompts)):
            engine.reset_prefix_cache()
            single += _generate(engine, prompts, [i], sampling)
        engine.reset_prefix_cache()
        batched = _generate(engine, prompts, list(range(len(prompts))), sampling)
        er.sequences = batched
        er.extra.update(ref=single, cand=batched)
        return
    if sc.probe == "prefill_consistency":
        engine.reset_prefix_cache()
        decoded = engine.generate(prompts, sampling)
        engine.reset_prefix_cache()
        limit = int(key.get("max_model_len") or 1 << 30) - 1
        texts = [(s.prompt_token_ids + s.token_ids)[:limit] for s in decoded]
        # Same request parameters as the decode, so V0 tempers its prompt logprobs alike;
        # V1 returns raw prompt logprobs whatever the parameters.
        scored = engine.generate(texts, replace(sampling, max_tokens=1, n=1, logprobs=0,
                                                prompt_logprobs=0))
        prefill = []
        for s, p in zip(decoded, scored):
            lps = (p.prompt_logprobs or [])[len(s.prompt_token_ids):]
            n = len(lps)
            prefill.append(Sequence(s.prompt_index, s.sample_index, s.prompt_token_ids,
                                    s.token_ids[:n], [float(x) for x in lps]))
        er.sequences = decoded
        er.extra.update(ref=prefill, cand=[replace(s, token_ids=s.token_ids[:len(p.token_ids)],
                                                   logprobs=s.logprobs[:len(p.token_ids)])
                                           for s, p in zip(decoded, prefill)])
        return
    raise ValueError(f"unknown probe {sc.probe!r}")


# ----------------------------------------------------------------------------- probes: judging


def aligned(ref: list[Sequence], cand: list[Sequence]) -> dict[str, Any]:
    """Pair sequences by (prompt, sample) and keep each pair's common token prefix: where the
    sampled tokens part, the logprobs no longer describe the same token.

    Returns:
        {"ref": [arrays], "cand": [arrays], "n_pairs", "n_diverged", "first_abs_dlogp": array}.
    """
    by_id = {(s.prompt_index, s.sample_index): s for s in cand}
    out_ref, out_cand, first, diverged = [], [], [], 0
    for r in ref:
        c = by_id.get((r.prompt_index, r.sample_index))
        if c is None:
            continue
        n = min(len(r.token_ids), len(c.token_ids))
        k = next((i for i in range(n) if r.token_ids[i] != c.token_ids[i]), n)
        if k < n or len(r.token_ids) != len(c.token_ids):
            diverged += 1
        out_ref.append(np.asarray(r.logprobs[:k], np.float64))
        out_cand.append(np.asarray(c.logprobs[:k], np.float64))
        if k:
            first.append(abs(r.logprobs[0] - c.logprobs[0]))
    return {"ref": out_ref, "cand": out_cand, "n_pairs": len(out_ref), "n_diverged": diverged,
            "first_abs_dlogp": np.asarray(first, np.float64)}


def probe_findings(pairs: dict[str, Any], tolerances: dict[str, float], min_tokens: int,
                   clip: metrics.ClipRange) -> tuple[list[Finding], dict[str, Any]]:
    """Per-sequence mean |dlogp| and k3 KL between the two runs, each judged against its
    tolerance with a one-sample bound (stats.threshold), as check_logprobs does."""
    summary = metrics.summarize(pairs["ref"], pairs["cand"], None, clip)
    per_seq = metrics.per_sequence(pairs["ref"], pairs["cand"], None, clip)
    findings = []
    n_tokens = int(summary["n_tokens"])
    if n_tokens < min_tokens:
        findings.append(Finding("n_tokens", "inconclusive", n_tokens, min_tokens,
                                note=f"only {n_tokens} comparable tokens (< {min_tokens})"))
    for name in ("abs_dlogp_mean", "kl_k3_mean"):
        if name in tolerances:
            test = stats.threshold(per_seq[name], tolerances[name])
            findings.append(Finding(name.replace("_mean", "_seqmean"), test.outcome,
                                    summary[name.replace("_mean", "_seqmean")], tolerances[name],
                                    test.to_dict(), test.reason))
    first = pairs["first_abs_dlogp"]
    stats_out = {k: summary[k] for k in ("n_seqs", "n_tokens", "abs_dlogp_mean", "abs_dlogp_p99",
                                         "abs_dlogp_max", "kl_k3_mean", "abs_dlogp_seqmean",
                                         "kl_k3_seqmean")}
    stats_out.update(n_diverged=pairs["n_diverged"],
                     first_token_abs_dlogp_mean=float(first.mean()) if first.size else float("nan"),
                     bitwise_equal=bool(n_tokens and summary["abs_dlogp_max"] == 0.0))
    return findings, stats_out


def _semantics(key: dict[str, Any], sampling) -> dict[str, str]:
    """What the decode and the prefill logprobs of one engine mean (read in vLLM's source)."""
    if not sampling.is_processed_distinct:
        same = "raw = processed (T=1, no truncation)"
        return {"decode": same, "prefill": same}
    v1 = str(key.get("engine_impl", "")).startswith("vllm.v1.")
    decode = str(key.get("logprobs_mode") or "processed_logprobs")
    prefill = "raw_logprobs (V1 never tempers prompt logprobs)" if v1 else \
        "processed_logprobs (V0 applies the request's temperature/top-k/top-p to prompt logprobs)"
    return {"decode": decode, "prefill": prefill}


def _measured_semantics(res, refs, seqs: list[Sequence]) -> str | None:
    """raw or processed: which reference distribution a set of logprobs sits closer to."""
    if not seqs or not res.scenario.sampling.is_processed_distinct:
        return None
    ref = refs.get(res.model_path, res.scenario.head_dtype)
    scores = ref.score([(s.prompt_token_ids, s.token_ids) for s in seqs], res.scenario.sampling)
    cand = np.concatenate([np.asarray(s.logprobs, np.float64) for s in seqs] or [np.zeros(0)])
    gap = {}
    for name in ("raw", "processed"):
        r = np.concatenate([getattr(x, f"{name}_logprob") for x in scores] or [np.zeros(0)])
        ok = np.isfinite(r) & np.isfinite(cand)
        gap[name] = float(np.mean(np.abs(r[ok] - cand[ok]))) if ok.any() else float("inf")
    return "raw_logprobs" if gap["raw"] < gap["processed"] else "processed_logprobs"


DIAGNOSES = {
    "prefix_cache": ("prefix_cache_drift", "a warm prefix cache moves the logprobs beyond "
                     "numeric noise: cached KV is not equivalent to recomputed KV on this "
                     "engine; set enable_prefix_caching=False"),
    "batch_invariance": ("batch_variance", "the logprobs depend on the batch a request is "
                         "served in beyond numeric noise: use the engine's batch-invariant mode "
                         "or fixed batch shapes, or budget this noise in the RL margins"),
    "prefill_consistency": ("prefill_decode_mismatch", "scoring the generated text by prefill "
                            "does not reproduce the decode logprobs: the engine's decode and "
                            "prefill paths disagree beyond numeric noise"),
}


def _judge_probe(res, refs, role: str) -> tuple[Verdict, dict[str, Any]]:
    sc = res.scenario
    er = res.runs[role]
    key = (er.effective_config or {}).get("key", {})
    if er.extra.get("probe_error"):
        return Verdict("inconclusive", "probe_not_run", er.extra["probe_error"]), {}
    pairs = aligned(er.extra["ref"], er.extra["cand"])
    findings, out = probe_findings(pairs, sc.tolerances, sc.min_tokens, sc.clip)
    detail: dict[str, Any] = {"probe": sc.probe, **out}
    notes = []
    if sc.probe == "prefix_cache":
        cold_hits = sum(s.num_cached_tokens or 0 for s in er.extra["ref"])
        warm_hits = sum(s.num_cached_tokens or 0 for s in er.extra["cand"])
        detail.update(prefix_tokens=er.extra["prefix_tokens"], cached_tokens_cold=cold_hits,
                      cached_tokens_warm=warm_hits,
                      enable_prefix_caching=key.get("enable_prefix_caching"))
        if not warm_hits:
            notes.append("no prefix-cache hits in the warm run"
                         + (" (prefix caching is off)" if not key.get("enable_prefix_caching")
                            else ""))
            if key.get("enable_prefix_caching"):
                findings.append(Finding("cache_hits", "inconclusive", 0, None,
                                        note="prefix caching is on but nothing was reused"))
        if cold_hits:
            notes.append(f"the cold run reused {cold_hits} cached tokens")
    if sc.probe == "prefill_consistency":
        sem = _semantics(key, sc.sampling)
        measured = {"decode": _measured_semantics(res, refs, er.extra["cand"]),
                    "prefill": _measured_semantics(res, refs, er.extra["ref"])}
        detail.update(semantics=sem, semantics_measured=measured)
        notes.append(f"decode logprobs: {sem['decode']}; prefill logprobs: {sem['prefill']}")
    outcome = combine(findings)
    m = (f"|dlogp| mean {out['abs_dlogp_mean']:.3g} (max {out['abs_dlogp_max']:.3g}), k3 "
         f"{out['kl_k3_mean']:.3g} over {out['n_tokens']} tokens of {out['n_seqs']} sequences, "
         f"{out['n_diverged']} diverged")
    detail["headline"] = (f"{sc.probe}: |dlogp| {out['abs_dlogp_mean']:.3g}, k3 "
                          f"{out['kl_k3_mean']:.2g}, {out['n_diverged']}/{out['n_seqs']} diverged")
    text = m + (f" ({'; '.join(notes)})" if notes else "")
    if outcome == "pass":
        return Verdict("pass", None, f"{sc.probe}: within numeric noise: {text}", findings), detail
    if outcome != "fail":
        return Verdict(outcome, None, f"{sc.probe}: {outcome}: {text}", findings), detail
    diagnosis, fix = DIAGNOSES[sc.probe]
    if sc.probe == "prefill_consistency":
        measured = detail["semantics_measured"]
        if measured["decode"] and measured["prefill"] and measured["decode"] != measured["prefill"]:
            diagnosis = "prompt_logprobs_semantics"
            fix = (f"the decode logprobs are {measured['decode']} but the prompt logprobs are "
                   f"{measured['prefill']}: teacher-forcing through prompt_logprobs gives other "
                   "semantics on this engine; score at T=1 without truncation, or compare raw "
                   "with raw")
    return Verdict("fail", diagnosis, f"{fix} ({text})", findings), detail


def judge(res, refs) -> tuple[Verdict, dict[str, Any]]:
    """The config diff (baseline vs candidate), or the probe's verdict on the candidate (with
    the baseline's probe result alongside when the scenario has one)."""
    sc = res.scenario
    if sc.probe == "config_diff":
        keys = {role: (er.effective_config or {}).get("key", {}) for role, er in res.runs.items()}
        return judge_config_diff(keys["baseline"], keys["candidate"])
    verdict, detail = _judge_probe(res, refs, "candidate")
    if "baseline" in res.runs:
        base_verdict, base_detail = _judge_probe(res, refs, "baseline")
        detail["baseline"] = {"verdict": base_verdict.to_dict(), **base_detail}
    return verdict, detail
