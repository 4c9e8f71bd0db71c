"""Short summaries of a run for CI, from report.json's data alone: the machine summary that
`parity check --json` prints on stdout, and the markdown appended to $GITHUB_STEP_SUMMARY."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from parity.verdicts.fmt import md_cell

OUTCOMES = ("pass", "fail", "inconclusive", "unresolved")
MARKS = {"pass": "✅", "fail": "❌", "inconclusive": "⚠️", "unresolved": "⛔"}


def machine(data: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The run in a few fields: exit code, counts, one line per scenario, the report files."""
    recs = data["scenarios"]
    counts = Counter((r["verdict"] or {}).get("outcome", "unresolved") for r in recs)
    return {
        "run_id": data["run_id"],
        "exit_code": data["exit_code"],
        "interrupted": data.get("interrupted"),
        "counts": {o: counts.get(o, 0) for o in OUTCOMES},
        "as_expected": sum(bool(r["as_expected"]) for r in recs),
        "not_as_expected": sum(not r["as_expected"] for r in recs),
        "scenarios": [
            {
                "name": r["name"],
                "category": r["category"],
                "outcome": (r["verdict"] or {}).get("outcome"),
                "expect": r["expect"],
                "as_expected": r["as_expected"],
                "diagnosis": (r["verdict"] or {}).get("diagnosis"),
                "key_metric": r.get("key_metric"),
                "message": (r["verdict"] or {}).get("message"),
            }
            for r in recs
        ],
        "report_dir": str(out_dir),
        "files": {
            name: str(out_dir / name)
            for name in ("report.json", "report.md", "report.html", "junit.xml", "tokens.parquet")
            if (out_dir / name).exists()
        },
    }


def markdown(data: dict[str, Any], out_dir: Path) -> str:
    """A step summary: the verdict line, one table row per scenario, where the report is."""
    s = machine(data, out_dir)
    c = s["counts"]
    head = (
        f"### parity check {s['run_id']}: exit {s['exit_code']}, "
        f"{s['as_expected']}/{len(s['scenarios'])} as expected"
    )
    lines = [head, "", " · ".join(f"{c[o]} {o}" for o in OUTCOMES if c[o]), ""]
    if s["interrupted"]:
        lines += [f"**Run incomplete: {s['interrupted']}.**", ""]
    lines += [
        "| | scenario | category | verdict | expected | diagnosis | key metric |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["scenarios"]:
        mark = MARKS.get(r["outcome"], "") if r["as_expected"] else "❗"
        lines.append(
            f"| {mark} | {md_cell(r['name'])} | {r['category']} | **{r['outcome']}** | "
            f"{r['expect']} | {md_cell(r['diagnosis'] or '')} | "
            f"{md_cell(r['key_metric'] or '')} |"
        )
    lines += ["", f"Report: `{out_dir}/report.md` (report.json, junit.xml beside it)", ""]
    return "\n".join(lines)


def append_step_summary(path: str, text: str) -> str | None:
    """Append to the GitHub step summary file; the reason when it cannot (never raises: a
    summary must not cost the run its exit code)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    except OSError as exc:
        return f"cannot append the step summary to {path}: {exc.strerror or exc}"
    return None
