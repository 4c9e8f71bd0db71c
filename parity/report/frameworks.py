"""The RL frameworks' own health numbers in parity's reports (parity.verdicts.frameworks): put on a
run's scenarios (each scored engine role's numbers in its metrics under "frameworks", the gates
asked for as findings of the scenario's verdict on every scored role: the candidate's bare, the
baseline's prefixed "baseline."), and rendered as rows for report.md, report.html and `parity
judge`'s reports, a framework's numbers first when asked (--format)."""

from __future__ import annotations

from typing import Any

from parity.run import tokens
from parity.run.results import RunResult, ScenarioResult
from parity.verdicts import frameworks as fw
from parity.verdicts.fmt import fmt

TITLES = {
    fw.NEMO: "NeMo-RL",
    fw.PRIME: "prime-rl",
    fw.VERL: "verl rollout correction",
    fw.TRL: f"TRL (sequence_mask, clip_max {fw.TRL_CLIP_MAX:g})",
    fw.IS: f"IS correction (TIS cap {fw.TIS_CAP:g}, ICEPOP [{fw.ICEPOP_BAND[0]:g}, "
    f"{fw.ICEPOP_BAND[1]:g}], sequence mask {fw.SEQ_MASK:g})",
}
# What a scenario's verdict says when a gate asked for fails and parity's own findings do not.
DIAGNOSIS, FIX = fw.DIAGNOSIS, fw.FIX


def scenario_numbers(res: ScenarioResult) -> dict[str, dict[str, Any]]:
    """Each engine role's framework numbers (with gates) on the tokens the reference scored;
    roles with none are left out."""
    out = {}
    for role, er in res.runs.items():
        trainer, engine, entropy = tokens.scored(res, er)
        if trainer:
            out[role] = fw.with_gates(fw.compute(trainer, engine, entropy))
    return out


def attach(run: RunResult, gates: list[str] = ()) -> None:
    """Every judged scenario's framework numbers into its metrics ("frameworks": role ->
    numbers); the gates asked for (`gates`, and the scenario's own) as findings of the verdict,
    on the numbers of every scored engine role (the candidate's, and the baseline's where the
    category scores it against the trainer)."""
    for res in run.results:
        numbers = scenario_numbers(res)
        if not numbers or res.verdict is None:
            continue
        res.detail = {**(res.detail or {}), "frameworks": numbers}
        names = list(dict.fromkeys([*gates, *res.scenario.gates]))
        if names:
            res.detail["framework_gates"] = names  # report.json: the gates judged, from both
            apply_gates(res.verdict, numbers, names)


def apply_gates(verdict, by_role: dict[str, dict[str, Any]], names: list[str]) -> None:
    """Add the gates `names` on each engine role's numbers (`by_role`, the candidate first) as
    findings to the verdict and recombine it; a failing gate on a verdict with no diagnosis of
    its own is diagnosed framework_gate, and the message says which gate of which role failed
    in either case."""
    roles = sorted(by_role, key=lambda role: role != fw.CANDIDATE)
    found = [f for role in roles for f in fw.findings(by_role[role], list(names), role)]
    if not found:
        return
    verdict.findings.extend(found)
    verdict.recombine()
    failed = [f for f in found if f.outcome == "fail"]
    if not failed:
        return
    why = "; ".join(f"{f.name} {fmt(f.value, 4)} > {fmt(f.limit, 4)} ({f.note})" for f in failed)
    if verdict.diagnosis is None:
        verdict.diagnosis = DIAGNOSIS
        verdict.message = f"framework gate failed: {why}. Otherwise: {verdict.message}"
    else:
        verdict.message += f"; framework gate failed: {why}"


def rows(numbers: dict[str, Any], first: str | None = None) -> list[dict[str, Any]]:
    """Every number as a row (framework, metric, value, gate text, met: None when the metric has
    no gate or was not measured), the frameworks in fw.order(first)."""
    out = []
    for name in fw.order(first):
        gates = {g.metric: g for g in fw.GATES[name]}
        for metric, value in (numbers.get(name) or {}).items():
            gate = gates.get(metric)
            out.append(
                {
                    "framework": name,
                    "metric": metric,
                    "value": value,
                    "gate": gate.text() if gate else "",
                    "met": gate.met(value) if gate else None,
                }
            )
    return out


def met_text(row: dict[str, Any]) -> str:
    if not row["gate"]:
        return ""
    return {True: "met", False: "NOT met", None: "not measured"}[row["met"]]


def markdown(by_role: dict[str, dict[str, Any]], first: str | None = None) -> list[str]:
    """The framework numbers of one scenario or group (columns: its roles) as report.md lines;
    nothing without numbers."""
    by_role = {role: n for role, n in (by_role or {}).items() if n and n.get("n_tokens")}
    if not by_role:
        return []
    roles = list(by_role)
    table = {
        role: {(r["framework"], r["metric"]): r for r in rows(n, first)}
        for role, n in by_role.items()
    }
    keys = list(dict.fromkeys(k for role in roles for k in table[role]))
    counts = ", ".join(
        f"{role} {n['n_tokens']} tokens in {n['n_sequences']} sequences"
        + (f" ({n['n_dropped']} with a non-finite logprob left out)" if n["n_dropped"] else "")
        for role, n in by_role.items()
    )
    lines = [
        "Trainer frameworks' health numbers on the same tokens (metrics; a gate is a finding "
        f"only when asked for; sources: docs/frameworks.md): {counts}.",
        "",
        "| framework | metric | " + " | ".join(roles) + " | gate |",
        "|---|---|" + "---|" * len(roles) + "---|",
    ]
    for key in keys:
        found = [table[role].get(key) for role in roles]
        gate = next(r["gate"] for r in found if r)
        cells = ["" if r is None else f"{fmt(r['value'], 4)} {met_text(r)}".strip() for r in found]
        lines.append(f"| {TITLES[key[0]]} | {key[1]} | " + " | ".join(cells) + f" | {gate} |")
    lines.append("")
    return lines
