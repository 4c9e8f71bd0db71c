"""`parity diff`: what moved between two runs' report.json (parity.report.rundiff)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from parity.cli.app import app, fail, out, report_problems
from parity.data.atomic import atomic_write
from parity.report import rundiff, rundiff_inputs, rundiff_render
from parity.report.build import EXIT_USAGE


@app.command()
def diff(
    run_a: Path = typer.Argument(
        ..., help="Run A (before): a `parity check` report directory or its report.json."
    ),
    run_b: Path = typer.Argument(..., help="Run B (after), same."),
    threshold: float = typer.Option(
        0.10,
        help="Relative change (of A's value) past which a metric or estimate has moved: 0.1 = 10%.",
    ),
    pair: list[str] = typer.Option(
        None,
        "--pair",
        metavar="A_NAME=B_NAME",
        help="Compare these two scenarios although their names differ (repeatable).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the diff as JSON on stdout, nothing else."
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        metavar="FILE.md",
        help="Also write the diff as Markdown to FILE.md.",
    ),
):
    """Compare two runs: verdicts, findings (with both intervals), metrics and engine
    configurations that moved from RUN_A to RUN_B (e.g. before and after an engine upgrade).

    Exit codes: 0 no verdict moved, 1 some verdict went pass -> fail or fail -> pass, 2 bad
    input (every problem listed).
    """
    problems = []
    if output is not None and not output.parent.is_dir():
        problems.append(
            ("--output", "FILE.md", f"{output}: its directory {output.parent} does not exist")
        )
    try:
        result = rundiff.diff(run_a, run_b, threshold, pair or [])
    except rundiff_inputs.DiffInputError as exc:
        problems = exc.problems + problems
    if problems:
        report_problems(problems, "in the inputs of parity diff")
    if output is not None:
        try:
            atomic_write(output, rundiff_render.to_markdown(result))
        except OSError as exc:
            fail(f"cannot write {output}: {exc}", EXIT_USAGE, exc)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        rundiff_render.print_table(result, out)
    raise typer.Exit(result["exit_code"])
