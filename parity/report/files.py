"""Writing a run's reports: report.json first, then report.md, junit.xml and report.html, each
replaced atomically; and the summary table on the terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from parity.data.atomic import atomic_write
from parity.report import html, opening
from parity.report.build import headline, to_json, verdict_of
from parity.report.junit import to_junit
from parity.report.markdown import to_markdown
from parity.run.results import RunResult


def write(run: RunResult, out_dir: Path, code: int) -> dict[str, Any]:
    """Write report.json, report.md, junit.xml and report.html into out_dir; returns the JSON
    data. Each file is replaced atomically (a crash or kill midway leaves the previous file
    whole), report.json first, so that a failure in the other renderings cannot cost it; the
    page last, and a failure to render it leaves a page saying why (`parity report` retries)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = to_json(run, code)
    atomic_write(out_dir / "report.json", json.dumps(data, indent=2) + "\n")
    atomic_write(out_dir / "report.md", to_markdown(data))
    atomic_write(out_dir / "junit.xml", to_junit(data) + "\n")
    try:
        html.write_page(data, out_dir)
    except html.RenderError as exc:  # the page says why; the reports above are whole
        print(f"warning: {exc}", file=sys.stderr)
    return data


def print_table(run: RunResult, console) -> None:
    """The run on the terminal: the V0 vs V1 table (when the run has rl scenarios), then one
    row per scenario in the run's order, then why each scenario that did not pass did not."""
    print_opening(run.report or {}, console)
    table = Table(title=f"parity check {run.run_id}")
    for col in ("scenario", "category", "verdict", "expected", "key metric", "diagnosis"):
        table.add_column(col, overflow="fold")
    colours = {"pass": "green", "fail": "red", "inconclusive": "yellow", "unresolved": "magenta"}
    for res in run.results:
        v = verdict_of(res, run.interrupted)
        mark = "" if res.as_expected else " [bold red](!)[/]"
        table.add_row(
            escape(res.scenario.name),
            res.scenario.category,
            f"[{colours.get(v.outcome, 'white')}]{v.outcome}[/]",
            res.scenario.expect + mark,
            escape(headline(res)),
            escape(v.diagnosis or ""),
        )
    console.print(table)
    for res in run.results:
        v = verdict_of(res, run.interrupted)
        if v.outcome != "pass":
            console.print(
                f"[bold]{escape(res.scenario.name)}[/]: {escape(v.message)}", highlight=False
            )


def print_opening(data: dict[str, Any], console) -> None:
    """parity.report.opening's table on the terminal, one column per engine (fits 100
    columns); nothing without rl scenarios."""
    rows = opening.rows(data)
    if not rows:
        return
    table = Table(title=opening.title(rows))
    table.add_column("metric")
    for r in rows:
        name = r.engine.replace("`", "").split(" (vLLM")[0]
        table.add_column(escape(f"{name} ({r.role})"), overflow="fold")
    for key, name in opening.COLUMNS:
        table.add_row(escape(name), *(opening.cell(r, key) for r in rows))
    table.add_row("verdict", *(escape(r.verdict) for r in rows))
    console.print(table)
