"""`parity bisect`: the smallest set of setting differences that turns a good engine setting
bad (parity.bisect), one search or one per scenario (--each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from parity.bisect import each as bisect_each
from parity.bisect import search
from parity.cli.app import app, fail, log, out, report_problems
from parity.engines.settings import inprocess_problems, parse_setting
from parity.plugins import PluginError
from parity.report.build import EXIT_UNRESOLVED, EXIT_USAGE
from parity.run import runner
from parity.run.scenario import Overrides, ScenarioError, load_scenarios


@app.command()
def bisect(
    good: str = typer.Option(
        ..., help="Good setting: PROFILE[,arg=value,env.VAR=value,envname=ENV]"
    ),
    bad: str = typer.Option(..., help="Bad setting, same syntax."),
    scenario: list[Path] = typer.Option(
        None,
        "--scenario",
        "-s",
        help="Scenario file(s) to judge trials with (default: scenarios/).",
    ),
    model: Optional[str] = typer.Option(None, help="Model for every scenario."),
    repeats: int = typer.Option(1, help="Runs per trial; disagreeing runs are UNRESOLVED."),
    each: bool = typer.Option(
        False,
        "--each",
        help="Bisect every scenario on its own (its own "
        "culprits); a trial setting several need "
        "starts one engine.",
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Report directory (default results/<run-id>/)."
    ),
):
    """Find the smallest set of setting differences that turns GOOD into BAD (ddmin).

    Exit codes: 0 culprit found (--each: for every scenario good and bad differ on), 1 good
    does not pass or bad does not fail on any scenario, 2 usage error, 125 unresolved
    (engines failed).
    """
    # Every problem of the options and the scenario files at once, before any engine starts.
    good_setting, problems = parse_setting(good, "--good")
    bad_setting, found = parse_setting(bad, "--bad")
    problems += found
    for where, parsed in (("--good", good_setting), ("--bad", bad_setting)):
        problems += inprocess_problems(parsed, where, "engine_args") if parsed else []
    if repeats < 1:
        problems.append(("--repeats", "value", f"{repeats}: must be >= 1"))
    try:
        scenarios = load_scenarios(scenario or [Path("scenarios")], Overrides(model=model))
    except ScenarioError as exc:
        problems += exc.problems
    except PluginError as exc:  # an installed plugin that cannot be used: which one and why
        fail(str(exc), EXIT_USAGE, exc)
    if problems:
        report_problems(problems)
    out_dir = runner.new_run_dir(output)
    try:
        if each:
            rep = bisect_each.bisect_each(
                scenarios, good_setting, bad_setting, out_dir, repeats, log=log
            )
        else:
            rep = search.bisect(scenarios, good_setting, bad_setting, out_dir, repeats, log=log)
    except ScenarioError as exc:  # an engine arg of --good/--bad that their vLLM refuses
        report_problems(exc.problems)
    if each:
        data = bisect_each.write(rep, out_dir)
        for one in rep.reports:
            _print_bisect(one, f"{one.scenarios[0]}: {one.status}")
        out.print(
            f"{len(rep.reports)} scenarios, {rep.n_trials} runs, {rep.engine_starts} "
            f"engine starts, {rep.wall_s:.0f} s; report: {out_dir}/bisect.md",
            highlight=False,
            markup=False,
        )
    else:
        data = search.write(rep, out_dir)
        _print_bisect(rep, rep.status)
        out.print(
            f"{data['n_trials']} trials, {rep.engine_starts} engine starts, "
            f"{rep.wall_s:.0f} s; report: {out_dir}/bisect.md",
            highlight=False,
            markup=False,
        )
    codes = {"found": 0, "good_does_not_pass": 1, "bad_does_not_fail": 1, "no_scenario_differs": 1}
    raise typer.Exit(codes.get(data["status"], EXIT_UNRESOLVED))


def _print_bisect(rep, title: str) -> None:
    """One bisection's trials as a table, then its culprits."""
    table = Table(title=f"parity bisect: {escape(title)}")
    for col in ("trial", "items applied to good", "outcome", "cached", "key metric"):
        table.add_column(col, overflow="fold")
    for t in rep.trials:
        table.add_row(
            str(t["index"]),
            escape(", ".join(t["items"]) or "(good)"),
            t["outcome"],
            "yes" if t["cached"] else "",
            escape(json.dumps(t["key_metric"])),
        )
    out.print(table)
    for c in rep.culprits:
        out.print(
            f"culprit: {c['item']} (good {c['good_value']}, bad {c['bad_value']}) - "
            f"{c['category']}; fix: {c['fix']}",
            highlight=False,
            markup=False,
        )
