"""The `parity` command line: parses, calls the library, renders, maps outcomes to exit codes."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Optional

from rich.markup import escape

import typer
from rich.console import Console

from parity.report.report import EXIT_UNRESOLVED, EXIT_USAGE

app = typer.Typer(help="Prove (or disprove) that two LLM inference backends behave the same "
                       "for RL.", no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Build and list the models parity runs engines on.",
                         no_args_is_help=True)
env_app = typer.Typer(help="Isolated engine environments (e.g. the vLLM V0 virtualenv).",
                      no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(env_app, name="env")

def _console(stderr: bool) -> Console:
    """A terminal gets rich's width; a pipe or a CI log gets lines that never wrap (a wrapped
    line breaks grep)."""
    stream = sys.stderr if stderr else sys.stdout
    tty = hasattr(stream, "isatty") and stream.isatty()
    return Console(stderr=stderr, soft_wrap=not tty, width=None if tty else 4096)


console = _console(stderr=True)
out = _console(stderr=False)
DEBUG = {"on": False}


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    DEBUG["on"] = debug
    # transformers' own bars ("Loading weights" for every reference and checkpoint load) are
    # noise beside parity's progress, and carriage returns in CI logs.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # SIGTERM (a CI timeout, kill) ends a run like Ctrl-C: engines stopped, partial report kept.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signum}")


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
                                                    "(default: scenarios/, or the suite's)."),
    suite: Optional[str] = typer.Option(
        None, "--suite", help="A named list of scenarios, scenarios/suites/NAME.toml (e.g. "
                              "quick: the four fix categories in minutes), or a suite file."),
    model: Optional[str] = typer.Option(None, help="Model for every scenario (name or path); "
                                                   "overrides the files and $PARITY_MODEL."),
    candidate: Optional[str] = typer.Option(
        None, help="Candidate for every scenario: PROFILE[,arg=value,...] (merged over each "
                   "scenario's table, e.g. v1-parity,tensor_parallel_size=2) or a server's URL."),
    baseline: Optional[str] = typer.Option(
        None, help="Baseline for every scenario: PROFILE[,arg=value,...] or a server's URL."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Report directory (default results/<run-id>/)."),
    start_timeout: float = typer.Option(600.0, help="Seconds an engine may take to start."),
    request_timeout: float = typer.Option(1800.0, help="Seconds one generate call may take."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Validate everything (engine args in their engines' "
                                      "environments too), print the engine plan, start nothing."),
    reference_device: Optional[str] = typer.Option(
        None, "--reference-device", help="Device of the HF reference for every scenario: auto, "
                                         "cpu, cuda or cuda:N (overrides [reference] device "
                                         "and $PARITY_REFERENCE_DEVICE)."),
    export_sequences: Optional[Path] = typer.Option(
        None, "--export-sequences", metavar="FILE",
        help="Run the engines, write the sequences the reference would score to FILE "
             "(.parquet or .jsonl) for an external trainer, and judge nothing (every scenario "
             "unresolved: not judged, exit 125)."),
    select: list[str] = typer.Option(
        [], "-k", metavar="PATTERN", help="Only scenarios whose name matches (substring or "
                                          "glob, any case); repeat for more."),
    category: list[str] = typer.Option([], "--category", help="Only scenarios of this "
                                                              "category; repeat for more."),
    prompts: Optional[int] = typer.Option(None, "--prompts", help="Number of prompts of every "
                                                                  "scenario (a quick run)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Max tokens per "
                                                                        "completion, every "
                                                                        "scenario."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed of every scenario."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine summary (JSON) on "
                                                        "stdout and nothing else there."),
    junit: Optional[Path] = typer.Option(None, "--junit", metavar="PATH",
                                         help="Also write the JUnit XML to PATH."),
):
    """Run scenarios and write report.json, report.md, report.html, junit.xml and tokens.parquet.

    Exit codes: 0 all as expected, 1 divergence, 2 usage or scenario error, 125 unresolved
    (an engine failed, or nothing was judged: --export-sequences) or inconclusive (too little
    data).
    """
    from parity import categories
    from parity.report import report
    from parity.run import runner, selection
    from parity.data import tables
    from parity.engines.base import EngineError
    from parity.run.scenario import Overrides, ScenarioError, load_scenarios

    problems = []
    if suite is not None:
        files, problems = selection.suite_files(suite)
        targets = [*(targets or []), *files]
    elif not targets:
        targets = [Path("scenarios")]
    if export_sequences is not None:
        why = tables.format_problem(export_sequences)
        if why is None and not export_sequences.parent.is_dir():
            why = f"its directory {export_sequences.parent} does not exist"
        if why:
            problems.append(("--export-sequences", "FILE", f"{export_sequences}: {why}"))
    if junit is not None and (junit.is_dir() or not junit.parent.is_dir()):
        problems.append(("--junit", "PATH", f"{junit}: give a file in an existing directory"))
    scenarios = []
    try:
        if targets or not problems:  # (a suite that names nothing found: its problems say why)
            scenarios = load_scenarios(targets, Overrides(model, candidate, baseline,
                                                          reference_device))
    except ScenarioError as exc:
        problems = exc.problems + problems
    scenarios, found = selection.select(scenarios, select, category, categories.names())
    problems += found
    scenarios, found = selection.override(scenarios, prompts, max_tokens, seed)
    problems += found
    if problems:
        _report_scenario_errors(ScenarioError(problems))
    if dry_run:
        _dry_run(scenarios)
    out_dir = runner.new_run_dir(output)
    from parity.run.progress import Display

    try:
        every = float(os.environ.get("PARITY_PROGRESS_EVERY_S", "15"))  # lines in CI logs
        with Display(console, every_s=every) as display:
            run = runner.run(scenarios, out_dir, log=display.log, start_timeout=start_timeout,
                             request_timeout=request_timeout, export=export_sequences,
                             progress=display.progress)
    except KeyboardInterrupt:
        _fail("interrupted before any engine started: nothing to report", EXIT_UNRESOLVED)
    except ScenarioError as exc:
        _report_scenario_errors(exc)
    except EngineError as exc:
        _fail(f"engine failure before any scenario ran: {exc}", EXIT_UNRESOLVED, exc)
    except Exception as exc:  # models/env build failures etc.: one clear line
        from parity.setup.envs import EnvError
        from parity.setup.models import ModelError

        if isinstance(exc, EnvError) and exc.usage:
            _fail(str(exc), EXIT_USAGE, exc)
        if isinstance(exc, (EnvError, ModelError)):
            _fail(str(exc), EXIT_UNRESOLVED, exc)
        raise
    code = report.exit_code(run)
    t0 = time.perf_counter()
    data = report.write(run, out_dir, code)
    data["timings"]["report_s"] = time.perf_counter() - t0  # after the fact: report.json only
    report.atomic_write(out_dir / "report.json", json.dumps(data, indent=2) + "\n")
    _ci_outputs(data, out_dir, junit)
    shown = console if json_out else out  # --json: stdout carries the summary only
    report.print_table(run, shown)
    if run.export and run.export.get("sequences") is not None:
        shown.print(f"sequences exported: {run.export['file']} ({run.export['sequences']} "
                    "sequences); nothing judged")
    shown.print(f"report: {out_dir}/report.md (report.html, report.json, junit.xml, "
                f"tokens.parquet beside it); exit code {code}")
    if json_out:
        from parity.report import summary

        sys.stdout.write(json.dumps(summary.machine(data, out_dir), indent=1) + "\n")
        sys.stdout.flush()
    raise typer.Exit(code)


def _ci_outputs(data: dict, out_dir: Path, junit: Optional[Path]) -> None:
    """--junit PATH and $GITHUB_STEP_SUMMARY; a failure is a warning, never the exit code."""
    from parity.report import report, summary

    if junit is not None:
        try:
            junit.write_text(report.to_junit(data) + "\n")
        except OSError as exc:
            _log(f"warning: cannot write --junit {junit}: {exc.strerror or exc}")
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        why = summary.append_step_summary(path, summary.markdown(data, out_dir))
        if why:
            _log(f"warning: {why}")


def _dry_run(scenarios) -> None:
    """Validate in the engines' environments (vLLM config checks in a subprocess, no model
    loaded; logs in a temporary directory), print the plan, exit 0; start no engine, write no
    report. Missing models and environments are built (their build time is the real run's)."""
    import tempfile

    from parity.run import runner
    from parity.engines.base import EngineSetting
    from parity.run.scenario import ScenarioError

    with tempfile.TemporaryDirectory(prefix="parity-dry-run-") as tmp:
        try:
            run = runner.run(scenarios, Path(tmp), log=_log, dry_run=True)
        except ScenarioError as exc:
            _report_scenario_errors(exc)
    for e in run.engines:
        st = e["setting"]
        label = EngineSetting.make(st["engine"], st["env"], st["engine_args"], st["env_vars"],
                                   st["profile"], st.get("url")).label()
        where = "" if st.get("url") or st["env"] == "harness" else f" in env {st['env']}"
        out.print(f"engine {e['n']}: {label}{where} on {Path(e['model']).name}: "
                  f"{', '.join(e['scenarios'])}"
                  + (f" (not started: {e['skipped']})" if e.get("skipped") else ""),
                  highlight=False, markup=False)
    for res in run.results:
        sc, s = res.scenario, res.scenario.sampling
        out.print(f"scenario {sc.name} ({sc.category}): {len(res.prompts)} prompts x n={s.n}, "
                  f"max_tokens {s.max_tokens} (<= {len(res.prompts) * s.n * s.max_tokens} "
                  f"tokens per engine), seed {s.seed}, T {s.temperature}", highlight=False)
    starting = sum(not e.get("skipped") for e in run.engines)
    out.print(f"dry run: {len(scenarios)} scenario(s) valid, {starting} engine(s) would "
              "start; nothing started")
    raise typer.Exit(0)


def _report_scenario_errors(exc) -> None:
    _report_problems(exc.problems, "in the scenarios")


def _report_problems(problems, where: str) -> None:
    """Every (file or option, field, message) problem, then exit 2."""
    console.print(f"[red]{len(problems)} problem(s) {where}:[/]", highlight=False)
    for file, field, message in problems:
        console.print(f"  {escape(str(file))}: [bold]{escape(str(field))}[/]: "
                      f"{escape(str(message))}", highlight=False)
    raise typer.Exit(EXIT_USAGE)


@app.command()
def judge(
    file: Path = typer.Argument(..., help="Per-token table: .parquet, .csv, .jsonl/.json or "
                                          ".pt (a torch.save'd dict of tensors)."),
    fmt: Optional[str] = typer.Option(None, "--format",
                                      help="Column names of: parity (default), verl, trl, "
                                           "prime-rl, nemo-rl."),
    maps: list[str] = typer.Option(None, "--map", help="canonical=column, e.g. "
                                                       "engine_logprob=rollout_lp (repeatable; "
                                                       "canonical= for none)."),
    tolerance: list[str] = typer.Option(None, "--tolerance",
                                        help="name=value: abs_dlogp_mean, kl_k3_mean, "
                                             "abs_dlogp_p99, excluded_rate (repeatable)."),
    clip_low: Optional[float] = typer.Option(None, help="PPO clip eps_low for the clip-rate "
                                                        "metrics (default 0.2)."),
    clip_high: Optional[float] = typer.Option(None, help="PPO clip eps_high (default 0.28)."),
    min_tokens: Optional[int] = typer.Option(None, help="Fewer scored tokens: inconclusive "
                                                        "(default: as scenarios, 200)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Report directory (default "
                                               "results/judge-<UTC stamp>/)."),
):
    """Judge a per-token table dumped by a trainer (verl, TRL, prime-rl, NeMo-RL, parity's own
    tokens.parquet): engine vs trainer logprobs, as the logprobs category; no engine starts.

    Exit codes: 0 every group passes, 1 any fails, 2 bad input (every problem listed),
    125 inconclusive (too little data).
    """
    from parity.data import dumps
    from parity import judging
    from parity.run import runner

    mapping, problems = dumps.parse_map(maps or [])
    tolerances, clip, min_tokens, found = judging.options(tolerance or [], clip_low,
                                                          clip_high, min_tokens)
    problems += found
    try:
        dump = None if problems else dumps.load(file, fmt, mapping)
    except dumps.DumpError as exc:
        problems += exc.problems
    if problems:
        _report_problems(problems, f"with {file}")
    results = judging.judge(dump, tolerances, clip, min_tokens)
    code = judging.exit_code(results)
    out_dir = runner.new_run_dir(output, prefix="judge-")
    data = judging.to_json(dump, results, tolerances, clip, min_tokens, code, out_dir.name)
    try:
        judging.write(data, out_dir)
    except OSError as exc:
        _fail(f"cannot write the report into {out_dir}: {exc}", EXIT_USAGE, exc)
    judging.print_table(data, out)
    out.print(f"report: {out_dir}/report.md (json, junit.xml beside it); exit code {code}")
    raise typer.Exit(code)
