"""`parity judge`'s reports from its report.json data (parity.judging.to_json): report.md,
junit.xml and the terminal table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from parity.data.atomic import atomic_write
from parity.report import frameworks, junit
from parity.verdicts.fmt import fmt


def to_markdown(data: dict[str, Any]) -> str:

    inp = data["input"]
    lines = [
        f"# parity judge {data['run_id']}",
        "",
        f"Exit code **{data['exit_code']}**. Created {data['created_utc']}, parity "
        f"{data['provenance']['parity_version']}.",
        "",
        f"File `{inp['file']}` (sha256 `{inp['sha256'][:16]}...`), format {inp['format']}, "
        f"{inp['layout']} layout, {inp['n_rows']} rows. Columns: "
        + ", ".join(f"{k} = `{v}`" for k, v in inp["mapping"].items())
        + ".",
        "",
    ]
    lines += [f"- {note}" for note in inp["notes"]] + ([""] if inp["notes"] else [])
    lines += [
        "Tolerances: "
        + ", ".join(f"{k} {v}" for k, v in data["tolerances"].items())
        + f"; clip [1 - {data['clip']['eps_low']}, 1 + {data['clip']['eps_high']}]; "
        f"min tokens {data['min_tokens']}.",
        "",
        "| group | verdict | diagnosis | tokens | mean abs dlogp | kl_k3 | p99 abs dlogp "
        "| excluded |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in data["groups"]:
        m = g["metrics"]
        lines.append(
            f"| {g['name']} | **{g['verdict']['outcome']}** | "
            f"{g['verdict']['diagnosis'] or ''} | {m['n_tokens']} | "
            f"{fmt(m['abs_dlogp_mean'], 4)} | {fmt(m['kl_k3_mean'], 4)} | "
            f"{fmt(m['abs_dlogp_p99'], 4)} | {m['n_ref_excluded']} |"
        )
    for g in data["groups"]:
        v = g["verdict"]
        lines += [
            "",
            f"## {g['name']}: {v['outcome']}",
            "",
            f"**Diagnosis:** {v['message']}",
            "",
            "| finding | kind | value | limit | 90% CI | p | outcome |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in v["findings"]:
            t = f.get("test") or {}
            ci = f"[{fmt(t.get('ci_low'), 4)}, {fmt(t.get('ci_high'), 4)}]" if "ci_low" in t else ""
            lines.append(
                f"| {f['name']} | {f['kind']} | {fmt(f['value'], 4)} | "
                f"{fmt(f['limit'], 4)} | {ci} | {fmt(t.get('p_value'), 3)} | "
                f"{f['outcome']} |"
            )
        lines += [""] + frameworks.markdown({"engine": g.get("frameworks")}, inp["format"])
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {fmt(val, 4)} |" for k, val in {**g["metrics"], **g["shape"]}.items()]
        lines += _versions(g)
    return "\n".join(lines) + "\n"


def _versions(g: dict[str, Any]) -> list[str]:
    """The per-weight-version table of one group, its columns the data's (judging.VERSION_KEYS)."""
    versions = g.get("per_weight_version")
    if not versions:
        return []
    keys = list(next(iter(versions.values())))
    return [
        "",
        f"Per weight version (shown, not judged; worst: {g['worst_weight_version']}):",
        "",
        "| version | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ] + [
        f"| {ver} | " + " | ".join(fmt(m[k], 4) for k in keys) + " |" for ver, m in versions.items()
    ]


def to_junit(data: dict[str, Any]) -> str:
    """One testcase per group, in the shape parity.report.junit reads (a group must pass)."""
    return junit.to_junit(
        {
            "timings": {},
            "scenarios": [
                {
                    "name": g["name"],
                    "category": "judge",
                    "verdict": g["verdict"],
                    "expect": "pass",
                    "as_expected": g["verdict"]["outcome"] == "pass",
                }
                for g in data["groups"]
            ],
        }
    )


def write(data: dict[str, Any], out_dir: Path) -> None:
    """report.json first (the other renderings cannot cost it), each file replaced atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "report.json", json.dumps(data, indent=2) + "\n")
    atomic_write(out_dir / "report.md", to_markdown(data))
    atomic_write(out_dir / "junit.xml", to_junit(data) + "\n")


def print_table(data: dict[str, Any], console) -> None:

    table = Table(title=f"parity judge {data['input']['file']}")
    for col in (
        "group",
        "verdict",
        "tokens",
        "mean |dlogp|",
        "kl_k3",
        "p99 |dlogp|",
        "excluded",
        "diagnosis",
    ):
        table.add_column(col, overflow="fold")
    colours = {"pass": "green", "fail": "red", "inconclusive": "yellow"}
    for g in data["groups"]:
        v, m = g["verdict"], g["metrics"]
        table.add_row(
            g["name"],
            f"[{colours.get(v['outcome'], 'white')}]{v['outcome']}[/]",
            str(m["n_tokens"]),
            fmt(m["abs_dlogp_mean"], 4),
            fmt(m["kl_k3_mean"], 4),
            fmt(m["abs_dlogp_p99"], 4),
            str(m["n_ref_excluded"]),
            v["diagnosis"] or "",
        )
    console.print(table)
    for note in data["input"]["notes"]:
        console.print(f"note: {note}", highlight=False)
    for g in data["groups"]:
        for line in _framework_lines(g, data["input"]["format"]):
            console.print(line, highlight=False)
        if len(g.get("per_weight_version") or {}) > 1:  # one version: nothing to compare
            console.print(
                f"{g['name']}: per weight version mean |dlogp| "
                + ", ".join(
                    f"{ver} {fmt(m['abs_dlogp_mean'], 4)} ({m['n_tokens']} tok)"
                    for ver, m in g["per_weight_version"].items()
                )
                + f"; worst {g['worst_weight_version']}",
                highlight=False,
            )
        if g["verdict"]["outcome"] != "pass":
            console.print(f"[bold]{g['name']}[/]: {g['verdict']['message']}", highlight=False)


def _framework_lines(g: dict[str, Any], first: str | None) -> list[str]:
    """One terminal line per trainer framework of one group, `first` (the --format) first:
    each number, gated ones with their gate met or not."""
    numbers = g.get("frameworks") or {}
    if not numbers.get("n_tokens"):
        return []
    by_framework: dict[str, list[str]] = {}
    for r in frameworks.rows(numbers, first):
        gate = f" ({r['gate']}: {frameworks.met_text(r)})" if r["gate"] else ""
        by_framework.setdefault(r["framework"], []).append(
            f"{r['metric']} {fmt(r['value'], 4)}{gate}"
        )
    return [
        f"{g['name']}: {frameworks.TITLES[name]}: " + ", ".join(items)
        for name, items in by_framework.items()
    ]
