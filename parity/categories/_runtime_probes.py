"""The behavioural probes of category runtime on one engine (prefix cache cold vs warm, batch size
1 vs N, decode vs re-prefill): driven on the engine, the two runs paired token by token, judged
against the runtime tolerances, and a failure diagnosed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from parity import engines
from parity.categories import _common
from parity.categories.base import sampling_for
from parity.engines.base import Sequence
from parity.verdicts import core, formulas, metrics, stats
from parity.verdicts.fmt import fmt

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
    sampling = sampling_for(sc, role)
    probe = sc.options["probe"]
    if probe == "config_diff":
        # The configs were read at start; one short request shows the engine also serves.
        er.sequences = engine.generate(prompts[:1], replace(sampling, max_tokens=4, n=1))
        return
    if probe == "prefix_cache":
        if not key.get("enable_prefix_caching"):
            er.extra["probe_error"] = (
                "prefix caching is off on this engine: the probe has no cache to compare"
            )
            return
        block = int(key.get("block_size") or 16)
        room = int(key.get("max_model_len") or 2048) - sampling.max_tokens - max(map(len, prompts))
        length = min(2 * block, room - 1)
        if length < block:
            er.extra["probe_error"] = (
                f"max_model_len leaves room for {room} prefix tokens, "
                f"less than one KV block ({block})"
            )
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
    if probe == "batch_invariance":
        single = []
        for i in range(len(prompts)):
            engine.reset_prefix_cache()
            single += _generate(engine, prompts, [i], sampling)
        engine.reset_prefix_cache()
        batched = _generate(engine, prompts, list(range(len(prompts))), sampling)
        er.sequences = batched
        er.extra.update(ref=single, cand=batched)
        return
    if probe == "prefill_consistency":
        engine.reset_prefix_cache()
        decoded = engine.generate(prompts, sampling)
        engine.reset_prefix_cache()
        limit = int(key.get("max_model_len") or 1 << 30) - 1
        texts = [(s.prompt_token_ids + s.token_ids)[:limit] for s in decoded]
        # Same request parameters as the decode, so V0 tempers its prompt logprobs alike;
        # V1 returns raw prompt logprobs whatever the parameters.
        scored = engine.generate(
            texts, replace(sampling, max_tokens=1, n=1, logprobs=0, prompt_logprobs=0)
        )
        prefill = []
        for s, p in zip(decoded, scored):
            lps = (p.prompt_logprobs or [])[len(s.prompt_token_ids) :]
            n = len(lps)
            prefill.append(
                Sequence(
                    s.prompt_index,
                    s.sample_index,
                    s.prompt_token_ids,
                    s.token_ids[:n],
                    [float(x) for x in lps],
                )
            )
        er.sequences = decoded
        er.extra.update(
            ref=prefill,
            cand=[
                replace(
                    s,
                    token_ids=s.token_ids[: len(p.token_ids)],
                    logprobs=s.logprobs[: len(p.token_ids)],
                )
                for s, p in zip(decoded, prefill)
            ],
        )
        return
    raise ValueError(f"unknown probe {probe!r}")


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
    return {
        "ref": out_ref,
        "cand": out_cand,
        "n_pairs": len(out_ref),
        "n_diverged": diverged,
        "first_abs_dlogp": np.asarray(first, np.float64),
    }


def probe_findings(
    pairs: dict[str, Any],
    tolerances: dict[str, float],
    min_tokens: int,
    clip: formulas.ClipRange,
) -> tuple[list[core.Finding], list[core.Precondition], dict[str, Any]]:
    """Per-sequence mean |dlogp| and k3 KL between the two runs, each judged against its
    tolerance with a one-sample bound (stats.threshold), as the logprobs category does; and
    engine_neginf / absurd_logprob (count limits of 0) over both runs' logprobs."""
    summary = metrics.summarize(pairs["ref"], pairs["cand"], None, clip)
    per_seq = metrics.per_sequence(pairs["ref"], pairs["cand"], None, clip)
    n_tokens = int(summary["n_tokens"])
    pre = [_common.tokens_precondition(n_tokens, min_tokens, "comparable tokens")]
    findings = []
    for name in ("abs_dlogp_mean", "kl_k3_mean"):
        if name in tolerances:
            findings.append(
                core.from_test(
                    name.replace("_mean", "_seqmean"),
                    stats.threshold(per_seq[name], tolerances[name]),
                )
            )
    # Both runs are the engine's: a -inf or a fill value on either side is the engine's.
    words = _common.Words("comparable tokens", "")
    findings += [
        _common.engine_neginf_finding(pairs["ref"] + pairs["cand"], 2 * n_tokens, words),
        _common.absurd_finding(
            {"first-run engine": pairs["ref"], "second-run engine": pairs["cand"]},
            n_tokens,
            words,
        ),
    ]
    first = pairs["first_abs_dlogp"]
    stats_out = {
        k: summary[k]
        for k in (
            "n_seqs",
            "n_tokens",
            "abs_dlogp_mean",
            "abs_dlogp_p99",
            "abs_dlogp_max",
            "kl_k3_mean",
            "abs_dlogp_seqmean",
            "kl_k3_seqmean",
        )
    }
    stats_out.update(
        n_diverged=pairs["n_diverged"],
        first_token_abs_dlogp_mean=float(first.mean()) if first.size else None,
        bitwise_equal=bool(n_tokens and summary["abs_dlogp_max"] == 0.0),
    )
    return findings, pre, stats_out


def _semantics(key: dict[str, Any], sampling, kind: str = "vllm") -> dict[str, str]:
    """What the decode and the prefill logprobs of one engine mean (read in vLLM's source; an
    engine kind from a plugin says what it can in its effective config's logprobs_mode)."""
    if not sampling.is_processed_distinct:
        same = "raw = processed (T=1, no truncation)"
        return {"decode": same, "prefill": same}
    if kind not in engines.ENGINES:
        return {
            "decode": str(key.get("logprobs_mode") or f"unknown (engine kind {kind})"),
            "prefill": f"unknown (engine kind {kind} is not vLLM; see the measured semantics)",
        }
    v1 = str(key.get("engine_impl", "")).startswith("vllm.v1.")
    decode = str(key.get("logprobs_mode") or "processed_logprobs")
    prefill = (
        "raw_logprobs (V1 never tempers prompt logprobs)"
        if v1
        else "processed_logprobs (V0 applies the request's temperature/top-k/top-p to prompt logprobs)"
    )
    return {"decode": decode, "prefill": prefill}


def _measured_semantics(res, refs, seqs: list[Sequence], er=None) -> str | None:
    """raw or processed: which reference distribution a set of logprobs sits closer to."""
    if not seqs or not res.scenario.sampling.is_processed_distinct:
        return None
    ref = refs.get(res.model_path, res.scenario.head_dtype, er)
    scores = ref.score([(s.prompt_token_ids, s.token_ids) for s in seqs], res.scenario.sampling)
    cand = np.concatenate([np.asarray(s.logprobs, np.float64) for s in seqs] or [np.zeros(0)])
    gap = {}
    for name in ("raw", "processed"):
        r = np.concatenate([getattr(x, f"{name}_logprob") for x in scores] or [np.zeros(0)])
        ok = np.isfinite(r) & np.isfinite(cand)
        gap[name] = float(np.mean(np.abs(r[ok] - cand[ok]))) if ok.any() else float("inf")
    return "raw_logprobs" if gap["raw"] < gap["processed"] else "processed_logprobs"


DIAGNOSES = {
    "prefix_cache": (
        "prefix_cache_drift",
        "a warm prefix cache moves the logprobs beyond "
        "numeric noise: cached KV is not equivalent to recomputed KV on this "
        "engine; set enable_prefix_caching=False",
    ),
    "batch_invariance": (
        "batch_variance",
        "the logprobs depend on the batch a request is "
        "served in beyond numeric noise: use the engine's batch-invariant mode "
        "or fixed batch shapes, or budget this noise in the RL margins",
    ),
    "prefill_consistency": (
        "prefill_decode_mismatch",
        "scoring the generated text by prefill "
        "does not reproduce the decode logprobs: the engine's decode and "
        "prefill paths disagree beyond numeric noise",
    ),
}


def judge_probe(res, refs, role: str) -> tuple[core.Verdict, dict[str, Any]]:
    sc = res.scenario
    er = res.runs[role]
    probe = sc.options["probe"]
    key = (er.effective_config or {}).get("key", {})
    if er.extra.get("probe_error"):
        return core.Verdict(
            "inconclusive",
            "probe_not_run",
            er.extra["probe_error"],
            preconditions=[
                core.Precondition("probe_ran", False, None, True, er.extra["probe_error"])
            ],
        ), {}
    pairs = aligned(er.extra["ref"], er.extra["cand"])
    findings, pre, out = probe_findings(pairs, sc.tolerances, sc.min_tokens, sc.clip)
    detail: dict[str, Any] = {"probe": probe, **out, "key_metric": out["abs_dlogp_mean"]}
    notes = []
    if probe == "prefix_cache":
        cold_hits = sum(s.num_cached_tokens or 0 for s in er.extra["ref"])
        warm_hits = sum(s.num_cached_tokens or 0 for s in er.extra["cand"])
        detail.update(
            prefix_tokens=er.extra["prefix_tokens"],
            cached_tokens_cold=cold_hits,
            cached_tokens_warm=warm_hits,
            enable_prefix_caching=key.get("enable_prefix_caching"),
        )
        pre.append(
            core.at_least(
                "cache_hits", warm_hits, 1, "prefix caching is on but the warm run reused nothing"
            )
        )
        if cold_hits:
            notes.append(f"the cold run reused {cold_hits} cached tokens")
    if probe == "prefill_consistency":
        sem = _semantics(key, sc.sampling, er.setting.engine)
        measured = {
            "decode": _measured_semantics(res, refs, er.extra["cand"], er),
            "prefill": _measured_semantics(res, refs, er.extra["ref"], er),
        }
        detail.update(semantics=sem, semantics_measured=measured)
        notes.append(f"decode logprobs: {sem['decode']}; prefill logprobs: {sem['prefill']}")
    outcome = core.combine(findings, pre)
    m = (
        f"|dlogp| mean {fmt(out['abs_dlogp_mean'])} (max {fmt(out['abs_dlogp_max'])}), k3 "
        f"{fmt(out['kl_k3_mean'])} over {out['n_tokens']} tokens of {out['n_seqs']} sequences, "
        f"{out['n_diverged']} diverged"
    )
    detail["headline"] = (
        f"{probe}: |dlogp| {fmt(out['abs_dlogp_mean'])}, k3 "
        f"{fmt(out['kl_k3_mean'], 2)}, {out['n_diverged']}/{out['n_seqs']} "
        "diverged"
    )
    text = m + (f" ({'; '.join(notes)})" if notes else "")
    if outcome == "pass":
        return core.Verdict(
            "pass", None, f"{probe}: within numeric noise: {text}", findings, pre
        ), detail
    if outcome != "fail":
        unmet = "; ".join(p.note for p in pre if not p.met)
        return core.Verdict(
            outcome,
            None,
            f"{probe}: {outcome}: {text}" + (f"; {unmet}" if unmet else ""),
            findings,
            pre,
        ), detail
    vanished = _common.vanished_message(findings)
    if vanished:
        return core.Verdict(
            "fail", "vanished_tokens", f"{vanished} ({text})", findings, pre
        ), detail
    diagnosis, fix = DIAGNOSES[probe]
    if probe == "prefill_consistency":
        measured = detail["semantics_measured"]
        if measured["decode"] and measured["prefill"] and measured["decode"] != measured["prefill"]:
            diagnosis = "prompt_logprobs_semantics"
            fix = (
                f"the decode logprobs are {measured['decode']} but the prompt logprobs are "
                f"{measured['prefill']}: teacher-forcing through prompt_logprobs gives other "
                "semantics on this engine; score at T=1 without truncation, or compare raw "
                "with raw"
            )
    return core.Verdict("fail", diagnosis, f"{fix} ({text})", findings, pre), detail
