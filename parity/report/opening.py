"""The table that opens a report (report.md, report.html, the terminal): each engine of the run's
rl scenarios on the RL metrics the write-up compared (clip rate, k3 KL, entropy, reward) and
|dlogp|, each value with its interval, baseline first, then each candidate with its verdict. From
report.json's data alone (metrics.intervals of the rl category); no rl scenario, no table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from typing import Any

from parity.verdicts.fmt import fmt

COLUMNS = (
    ("clip_rate", "clip rate"),
    ("kl_k3", "k3 KL"),
    ("entropy", "entropy"),
    ("reward", "reward"),
    ("abs_dlogp", "|dlogp|"),
)
NOTE = (
    "Each engine's own samples, scored by the same trainer: mean of prompt means "
    "[{conf:g}% bootstrap interval over prompts]. clip rate: share of tokens whose ratio "
    "exp(r) leaves the PPO clip range; k3 KL: exp(r) - r - 1, r = trainer - engine logprob; "
    "entropy: "
    "the trainer's at the sampled positions; reward: the scenario's; |dlogp|: mean "
    "|engine - trainer| logprob. Each candidate's verdict compares it with the baseline "
    "(paired by prompt; its section has the findings)."
)


@dataclass
class Row:
    """One engine of the table: its role, name, the scenario and verdict (candidates), and
    metric -> (mean, low, high)."""

    role: str
    engine: str
    scenario: str | None = None
    verdict: str = ""
    cells: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    confidence: float = 0.9


def engine_name(e: dict[str, Any]) -> str:
    """ "V0 `v0` (vLLM 0.8.5)": the engine generation from the class that ran, the setting's
    label and the version."""
    impl = str(e.get("engine_impl") or "")
    gen = "V1 " if ".v1." in impl else "V0 " if impl.startswith("vllm.engine") else ""
    version = f" (vLLM {e['vllm_version']})" if e.get("vllm_version") else ""
    return f"{gen}`{e.get('label') or '?'}`{version}"


def rows(data: dict[str, Any]) -> list[Row]:
    """The table's rows: per rl scenario with intervals, its baseline (once when several
    scenarios share the same baseline samples) and its candidate."""
    out: list[Row] = []
    seen: set[str] = set()
    for rec in data.get("scenarios") or []:
        intervals = (rec.get("metrics") or {}).get("intervals") or {}
        if rec.get("category") != "rl" or not intervals:
            continue
        for role in ("baseline", "candidate"):
            if role not in intervals:
                continue
            e = (rec.get("engines") or {}).get(role) or {}
            row = Row(role, engine_name(e), cells=_cells(intervals[role]))
            row.confidence = next((v["confidence"] for v in intervals[role].values()), 0.9)
            key = json.dumps([role, row.engine, intervals[role]], sort_keys=True)
            if role == "baseline" and key in seen:
                continue
            seen.add(key)
            if role == "candidate":
                row.scenario, row.verdict = rec.get("name"), _verdict(rec)
            out.append(row)
    return out


def title(table: list[Row]) -> str:
    names = {r.engine.split(" ")[0] for r in table}
    return "V0 vs V1 on the RL metrics" if {"V0", "V1"} <= names else "Engines on the RL metrics"


def cell(row: Row, metric: str) -> str:
    if metric not in row.cells:
        return "n/a"
    m, lo, hi = row.cells[metric]
    return f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]"


def markdown(data: dict[str, Any]) -> list[str]:
    """The section that opens report.md (no lines when the run has no rl scenario)."""
    table = rows(data)
    if not table:
        return []
    head = ["engine", "role", "scenario: verdict", *(name for _, name in COLUMNS)]
    lines = [
        f"## {title(table)}",
        "",
        "| " + " | ".join(head).replace("|dlogp|", "\\|dlogp\\|") + " |",
        "|" + "---|" * len(head),
    ]
    for r in table:
        what = f"{r.scenario}: **{r.verdict}**" if r.scenario else ""
        lines.append(
            f"| {r.engine} | {r.role} | {what} | "
            + " | ".join(cell(r, k) for k, _ in COLUMNS)
            + " |"
        )
    return lines + ["", NOTE.format(conf=100 * table[0].confidence), ""]


def html(data: dict[str, Any]) -> str:
    """The table that opens report.html, in its header card after the run's facts ("" when
    the run has no rl scenario)."""
    table = rows(data)
    if not table:
        return ""
    head = "".join(
        f"<th>{escape(h)}</th>"
        for h in ("engine", "role", "scenario: verdict", *(n for _, n in COLUMNS))
    )
    body = ""
    for r in table:
        what = f"{escape(r.scenario)}: <b>{escape(r.verdict)}</b>" if r.scenario else ""
        body += (
            f"<tr><td>{escape(r.engine.replace('`', ''))}</td><td>{r.role}</td><td>{what}</td>"
            + "".join(f'<td class="num">{escape(cell(r, k))}</td>' for k, _ in COLUMNS)
            + "</tr>"
        )
    note = escape(NOTE.format(conf=100 * table[0].confidence))
    return (
        f'<div id="opening"><h2>{escape(title(table))}</h2>'
        f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
        f'<p class="mute">{note}</p></div>'
    )


def _cells(intervals: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    return {k: (v["mean"], v["ci_low"], v["ci_high"]) for k, v in intervals.items() if "mean" in v}


def _verdict(rec: dict[str, Any]) -> str:
    v = rec.get("verdict") or {}
    text = str(v.get("outcome") or "unresolved")
    if v.get("diagnosis"):
        text += f" ({v['diagnosis']})"
    return text + ("" if rec.get("as_expected") else ", NOT as expected")
