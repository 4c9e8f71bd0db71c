"""Category `runtime`: the engines' effective configurations side by side (the V0-parity keys
must match, each difference tagged with its RL consequence), and the behavioural probes of one
engine (_runtime_probes.py) as a category: its options, tolerances, diagnoses and refusals."""

from __future__ import annotations

from typing import Any

from parity import engines
from parity.categories import _common
from parity.categories._runtime_probes import DIAGNOSES, drive, judge_probe
from parity.categories.base import Category, choice
from parity.engines import configdiff
from parity.verdicts import core

PROBES = ("config_diff", "prefix_cache", "batch_invariance", "prefill_consistency")
RESETS = PROBES[1:]  # the probes that call engine.reset_prefix_cache()
# Two runs of one engine on the same tokens: only kernel and batching noise may separate them.
# Chosen below the engine-to-trainer bf16 noise (~0.03-0.04 mean |dlogp|, docs/measurements.md#measured-gaps); measured
# values and the command that reproduces them: docs/measurements.md#runtime-probes.
RUNTIME_ABS_DLOGP = 0.02
RUNTIME_KL_K3 = 0.002


def judge_config_diff(
    base: dict[str, Any], cand: dict[str, Any], keys=configdiff.V0_PARITY_KEYS
) -> tuple[core.Verdict, dict]:
    """Every key that must match is an equality finding (fails naming the key and its fix; a
    key one engine does not report is inconclusive); every other difference is listed with its
    RL consequence in the detail. Model identity is judged for every category by the runner."""
    rows = configdiff.config_diff(base, cand)
    checks = configdiff.must_match(base, cand, keys)
    findings = [
        core.equality(
            f"match.{r['key']}",
            r["baseline"],
            r["candidate"],
            lambda a, b, k=r["key"]: configdiff.equal(k, a, b),
            note=""
            if r["status"] == "same"
            else (
                f"fix: {r['fix']}" if r["status"] == "differs" else "one engine does not report it"
            ),
        )
        for r in checks
    ]
    rl = [r for r in rows if r["severity"] == "rl"]
    detail = {
        "differences": rows,
        "must_match": checks,
        "candidate_risks": configdiff.risks(cand),
        "baseline_risks": configdiff.risks(base),
        "key_metric": float(len(rl)),
        "headline": f"{len(rows)} differences, {len(rl)} with RL consequences, "
        f"{sum(r['status'] == 'differs' for r in checks)} must-match keys "
        "differ",
    }
    outcome = core.combine(findings)
    differing = [r for r in checks if r["status"] == "differs"]
    if differing:
        text = "; ".join(
            f"{r['key']} {r['baseline']!r} vs {r['candidate']!r}: {r['fix']}" for r in differing
        )
        return core.Verdict(
            "fail",
            "runtime_defaults",
            f"runtime settings the V0-parity fixes pin differ: {text}",
            findings,
        ), detail
    if outcome != "pass":
        unknown = ", ".join(r["key"] for r in checks if r["status"] == "unknown")
        return core.Verdict(
            outcome, None, f"cannot compare {unknown}: not reported by both engines", findings
        ), detail
    others = "; ".join(
        f"{r['key']} {r['baseline']!r} -> {r['candidate']!r}: {r['consequence']}" for r in rl
    )
    return core.Verdict(
        "pass",
        None,
        "the V0-parity settings match"
        + (f"; other differences with RL consequences: {others}" if others else ""),
        findings,
    ), detail


class Runtime(Category):
    name = "runtime"
    summary = "effective configuration diff (V0-parity keys must match) and behavioural probes"
    fields = {
        "probe": f"one of {', '.join(PROBES)} (default config_diff)",
        "must_match": "config_diff: the keys that must be equal (default: "
        + ", ".join(configdiff.V0_PARITY_KEYS)
        + ")",
    }
    tolerances = {"abs_dlogp_mean": RUNTIME_ABS_DLOGP, "kl_k3_mean": RUNTIME_KL_K3}
    diagnoses = {
        "runtime_defaults": "set the differing V0-parity keys alike (the message names each fix)",
        **{code: fix for code, fix in DIAGNOSES.values()},
        "prompt_logprobs_semantics": "score at T=1 without truncation, or compare raw with raw",
        "vanished_tokens": _common.VANISHED_FIX,
        **_common.GATE_DIAGNOSIS,
    }
    findings = {
        "match.*": "equality",
        "abs_dlogp_seqmean": "bound",
        "kl_k3_seqmean": "bound",
        **_common.VANISHED,
        **_common.GATES,
    }
    key_metric_name = "abs_dlogp_mean (probes) / RL-relevant differences (config_diff)"
    reuses_generations = False  # cold vs warm cache, batch 1 vs N: every call must be real
    scores_refusal = (
        "its probes compare the engine with itself; prefill_consistency's "
        "semantics diagnosis scores truncated sequences an export does not hold"
    )

    def parse(self, data, sampling, path):
        problems = []
        probe = choice(data, "probe", PROBES, "config_diff", path, problems)
        keys = data.get("must_match", list(configdiff.V0_PARITY_KEYS))
        if "must_match" in data and probe != "config_diff":
            problems.append((path, "must_match", "only the config_diff probe compares keys"))
        if not (isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys)):
            problems.append(
                (
                    path,
                    "must_match",
                    "must be a non-empty list of effective-config "
                    'key names, e.g. ["enable_prefix_caching"]',
                )
            )
            keys = list(configdiff.V0_PARITY_KEYS)
        return {"probe": probe, "must_match": tuple(keys)}, problems

    def roles(self, options):
        return (
            ("candidate", "baseline") if options.get("probe") == "config_diff" else ("candidate",)
        )

    def served_refusal(self, options):
        if options.get("probe") == "prefix_cache":
            return (
                "the prefix_cache probe resets the engine's prefix cache between runs, "
                "which parity does not do over HTTP: run it on an in-process engine"
            )
        return None

    def check_settings(self, scenario, path):
        problems = []
        probe = scenario.options.get("probe")
        for role, setting in scenario.settings().items():
            if probe in RESETS and setting.engine not in engines.ENGINES:
                if not hasattr(engines.engine_class(setting.engine), "reset_prefix_cache"):
                    problems.append(
                        (
                            path,
                            f"{role}.engine",
                            f"the {probe} probe resets the engine's prefix cache, and engine "
                            f"kind {setting.engine!r} has no reset_prefix_cache(): use the "
                            "config_diff probe, or an engine kind that has one",
                        )
                    )
        if probe != "prefix_cache":
            return problems
        for role, setting in scenario.settings().items():
            on = setting.args.get("enable_prefix_caching")
            # vLLM V0 leaves prefix caching off unless it is asked for; V1 turns it on.
            if on is False or (on is None and setting.variables.get("VLLM_USE_V1") == "0"):
                problems.append(
                    (
                        path,
                        f"{role}.engine_args.enable_prefix_caching",
                        "the prefix_cache probe needs prefix caching on: set "
                        "enable_prefix_caching = true (or use another probe)",
                    )
                )
        return problems

    def drive(self, engine, res, role, prompts, log):
        drive(engine, res, role, prompts, log)

    def judge(self, res, refs):
        sc = res.scenario
        if sc.options["probe"] == "config_diff":
            keys = {
                role: (er.effective_config or {}).get("key", {}) for role, er in res.runs.items()
            }
            return judge_config_diff(keys["baseline"], keys["candidate"], sc.options["must_match"])
        verdict, detail = judge_probe(res, refs, "candidate")
        if "baseline" in res.runs:
            base_verdict, base_detail = judge_probe(res, refs, "baseline")
            detail["baseline"] = {"verdict": base_verdict.to_dict(), **base_detail}
        return verdict, detail


CATEGORY = Runtime()
