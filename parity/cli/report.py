"""`parity report RUN_DIR`: report.md and report.html re-rendered from report.json."""

from __future__ import annotations

from pathlib import Path

import typer

from parity.cli.app import app, fail, out
from parity.report import html
from parity.report.build import EXIT_USAGE


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(
        ..., help="A run directory `parity check` wrote (results/<run-id>/ or its --output)."
    ),
):
    """Re-render report.md and report.html from RUN_DIR/report.json (and tokens.parquet where
    present); no engine starts.

    Exit codes: 0 written, 1 report.html could not be rendered (the page says why; report.md
    is written), 2 RUN_DIR or its report.json missing or unreadable.
    """
    try:
        written = html.rerender(run_dir)
    except html.RunDirError as exc:
        fail(str(exc), EXIT_USAGE, exc)
    except html.RenderError as exc:
        fail(str(exc), 1, exc)
    out.print("written: " + ", ".join(str(p) for p in written), highlight=False)
