"""The Python API: what `parity check` and `parity judge` do, callable from Python (the CLI is a
thin layer over these two functions, as lm-evaluation-harness's CLI is over simple_evaluate).

    import parity

    run = parity.check(["scenarios/logprobs-processed.toml"], model="tiny")
    run.exit_code                       # 0 as expected, 1 divergence, 125 unresolved
    run.results[0].verdict.outcome      # "pass", "fail", "inconclusive" or "unresolved"
    run.out_dir / "report.json"         # every report is written there

Bad input raises parity.run.scenario.ScenarioError with every problem at once (before anything
starts); an engine, model or environment that cannot be had raises EngineError, ModelError or
EnvError. Everything after the engines started ends in the returned RunResult instead.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity import categories, judging
from parity.data import atomic, dumpcolumns, dumps, tables
from parity.report import build, files, judge_report
from parity.report import frameworks as framework_numbers
from parity.run import runner, scenario, selection
from parity.run.results import RunResult
from parity.run.scenario import Overrides, Scenario, ScenarioError
from parity.trainer import semantics as trainer_semantics
from parity.verdicts import frameworks as fw

Problem = tuple[str, str, str]
Log = Callable[[str], None]


def scenarios(
    targets: Sequence[str | Path] = (),
    *,
    suite: str | None = None,
    model: str | None = None,
    candidate: str | None = None,
    baseline: str | None = None,
    reference_device: str | None = None,
    trainer: str | None = None,
    select: Sequence[str] = (),
    category: Sequence[str] = (),
    prompts: int | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    problems: Sequence[Problem] = (),
) -> list[Scenario]:
    """The scenarios a check runs, validated in full: `targets` (files or directories; default
    scenarios/) or a `suite`, overridden by model/candidate/baseline/reference_device/trainer
    (the command line's precedence; trainer: a parity.trainer.semantics.PRESETS name), picked
    by `select` patterns and `category`, shrunk by prompts/max_tokens/seed.

    Raises:
        ScenarioError: every problem at once, `problems` (the caller's own) included.
    """
    problems = list(problems)
    targets = [Path(t) for t in targets]
    if suite is not None:
        files_, found = selection.suite_files(suite)
        targets, problems = [*targets, *files_], found + problems
    elif not targets:
        targets = [Path("scenarios")]
    found_scenarios: list[Scenario] = []
    try:
        if targets or not problems:  # (a suite that names nothing found: its problems say why)
            found_scenarios = scenario.load_scenarios(
                targets, Overrides(model, candidate, baseline, reference_device, trainer)
            )
    except ScenarioError as exc:
        problems = exc.problems + problems
    picked, found = selection.select(
        found_scenarios, list(select), list(category), categories.names()
    )
    problems += found
    picked, found = selection.override(picked, prompts, max_tokens, seed)
    problems += found
    if problems:
        raise ScenarioError(problems)
    return picked


def export_problems(path: Path | None) -> list[Problem]:
    """Why `--export-sequences FILE` cannot be written (empty when it can)."""
    if path is None:
        return []
    why = tables.format_problem(path)
    if why is None and not path.parent.is_dir():
        why = f"its directory {path.parent} does not exist"
    return [("--export-sequences", "FILE", f"{path}: {why}")] if why else []


def plan(chosen: list[Scenario], log: Log = print) -> RunResult:
    """A dry run: models and environments built, every engine argument validated in its engine's
    environment, the engines planned (RunResult.engines); nothing started, nothing written."""
    with tempfile.TemporaryDirectory(prefix="parity-dry-run-") as tmp:
        return runner.run(chosen, Path(tmp), log=log, dry_run=True)


def check(
    targets: Sequence[str | Path] = (),
    *,
    output: str | Path | None = None,
    export_sequences: str | Path | None = None,
    start_timeout: float = 600.0,
    request_timeout: float = 1800.0,
    log: Log = print,
    progress: Callable[[dict], None] | None = None,
    problems: Sequence[Problem] = (),
    gates: Sequence[str] = (),
    **choose: Any,
) -> RunResult:
    """Run scenarios and write report.json, report.md, report.html, junit.xml and tokens.parquet
    into `output` (default results/<run-id>/).

    Args:
        targets, and `choose`: as scenarios() (suite, model, candidate, baseline,
            reference_device, trainer, select, category, prompts, max_tokens, seed).
        export_sequences: write the sequences the reference would score to this file and judge
            nothing (every scenario unresolved: not judged).
        log, progress: where the run's lines and the engines' progress messages go.
        problems: the caller's own input problems, reported with the scenarios'.
        gates: trainer frameworks (nemo-rl, prime-rl, verl) whose documented health gates
            become findings of every scenario that scores tokens (parity.verdicts.frameworks).
    Returns:
        The RunResult with exit_code, out_dir and report (report.json's data) set.
    Raises:
        ScenarioError: bad input, every problem at once, before any engine starts.
    """
    export = Path(export_sequences) if export_sequences is not None else None
    chosen = scenarios(
        targets, problems=[*export_problems(export), *gate_problems(gates), *problems], **choose
    )
    out_dir = runner.new_run_dir(Path(output) if output is not None else None)
    run = runner.run(
        chosen,
        out_dir,
        log=log,
        start_timeout=start_timeout,
        request_timeout=request_timeout,
        export=export,
        progress=progress,
    )
    return write_reports(run, out_dir, gates)


def gate_problems(gates: Sequence[str]) -> list[Problem]:
    """A problem for each --gate name that is no framework with gates."""
    return [
        ("--gate", name, f"use one of {', '.join(fw.GATEABLE)}")
        for name in fw.check_names(list(gates))
    ]


def write_reports(run: RunResult, out_dir: Path, gates: Sequence[str] = ()) -> RunResult:
    """Every report of a finished run into out_dir, each judged scenario with its trainer
    frameworks' numbers (and the gates asked for as findings); sets run.exit_code, out_dir and
    report."""
    framework_numbers.attach(run, list(gates))
    run.exit_code = build.exit_code(run)
    t0 = time.perf_counter()
    data = files.write(run, out_dir, run.exit_code)
    data["timings"]["report_s"] = time.perf_counter() - t0  # after the fact: report.json only
    atomic.atomic_write(out_dir / "report.json", json.dumps(data, indent=2) + "\n")
    run.out_dir, run.report = out_dir, data
    return run


@dataclass
class Judgement:
    """What `parity judge` wrote: its report directory, exit code and report.json's data."""

    out_dir: Path
    exit_code: int
    report: dict[str, Any]


def judge(
    file: str | Path,
    *,
    fmt: str | None = None,
    maps: Sequence[str] = (),
    tolerances: Sequence[str] = (),
    clip_low: float | None = None,
    clip_high: float | None = None,
    min_tokens: int | None = None,
    output: str | Path | None = None,
    trainer: str | None = None,
    gates: Sequence[str] = (),
) -> Judgement:
    """Judge a per-token table a trainer dumped (engine vs trainer logprobs, as the logprobs
    category; no engine starts) and write report.json, report.md and junit.xml.

    Args:
        file: .parquet, .csv, .jsonl/.json or .pt.
        fmt: its column names' framework: parity (default), verl, trl, prime-rl, nemo-rl.
        maps: "canonical=column" renames; tolerances: "name=value" overrides.
        trainer: the framework that computed the trainer column (a
            parity.trainer.semantics.PRESETS name), recorded in report.json's "trainer".
        gates: trainer frameworks (nemo-rl, prime-rl, verl) whose documented health gates
            become findings of every group.
    Raises:
        ScenarioError: every problem of the file and the options at once.
        OSError: the report directory cannot be written.
    """
    mapping, problems = dumpcolumns.parse_map(list(maps))
    limits, clip, min_tokens, found = judging.options(
        list(tolerances), clip_low, clip_high, min_tokens
    )
    problems += found + gate_problems(gates)
    unknown = trainer_semantics.unknown_trainer(trainer, "--trainer", "trainer")
    problems += [unknown] if unknown else []
    dump = None
    try:
        dump = None if problems else dumps.load(Path(file), fmt, mapping)
    except dumps.DumpError as exc:
        problems += exc.problems
    if problems:
        raise ScenarioError(problems)
    results = judging.judge(dump, limits, clip, min_tokens, list(gates))
    code = judging.exit_code(results)
    out_dir = runner.new_run_dir(Path(output) if output is not None else None, prefix="judge-")
    data = judging.to_json(dump, results, limits, clip, min_tokens, code, out_dir.name, list(gates))
    if trainer is not None:
        data["trainer"] = {"name": trainer, "semantics": trainer_semantics.PRESETS[trainer]}
    try:
        judge_report.write(data, out_dir)
    except OSError as exc:
        raise OSError(f"cannot write the report into {out_dir}: {exc}") from exc
    return Judgement(out_dir, code, data)
