"""`parity check`: run scenarios through real engines and judge them (parity.api.check)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from parity import api
from parity.cli.app import app, console, fail, log, out, report_problems
from parity.engines.base import EngineError, EngineSetting
from parity.plugins import PluginError
from parity.report import files, junit, summary
from parity.report.build import EXIT_UNRESOLVED, EXIT_USAGE
from parity.run.progress import Display
from parity.run.results import RunResult
from parity.run.scenario import ScenarioError
from parity.setup.envspecs import EnvError
from parity.setup.modelbuild import ModelError


@app.command()
def check(
    targets: list[Path] = typer.Argument(
        None, help="Scenario files or directories (default: scenarios/, or the suite's)."
    ),
    suite: Optional[str] = typer.Option(
        None,
        "--suite",
        help="A named list of scenarios, scenarios/suites/NAME.toml (e.g. "
        "quick: the four fix categories in minutes), or a suite file.",
    ),
    model: Optional[str] = typer.Option(
        None, help="Model for every scenario (name or path); overrides the files and $PARITY_MODEL."
    ),
    candidate: Optional[str] = typer.Option(
        None,
        help="Candidate for every scenario: PROFILE[,arg=value,...] (merged over each "
        "scenario's table, e.g. v1-parity,tensor_parallel_size=2) or a server's URL.",
    ),
    baseline: Optional[str] = typer.Option(
        None, help="Baseline for every scenario: PROFILE[,arg=value,...] or a server's URL."
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Report directory (default results/<run-id>/)."
    ),
    start_timeout: float = typer.Option(600.0, help="Seconds an engine may take to start."),
    request_timeout: float = typer.Option(1800.0, help="Seconds one generate call may take."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Validate everything (engine args in their engines' "
        "environments too), print the engine plan, start nothing.",
    ),
    reference_device: Optional[str] = typer.Option(
        None,
        "--reference-device",
        help="Device of the HF reference for every scenario: auto, "
        "cpu, cuda or cuda:N (overrides [reference] device "
        "and $PARITY_REFERENCE_DEVICE).",
    ),
    trainer: Optional[str] = typer.Option(
        None,
        "--trainer",
        help="The RL framework whose logprobs the reference computes, for every scenario: "
        "verl, trl, openrlhf, prime-rl, nemo-rl (tempered: log_softmax(logits / T), no "
        "top-k/top-p replay) or processed-replay (overrides [reference] semantics and "
        "$PARITY_TRAINER).",
    ),
    export_sequences: Optional[Path] = typer.Option(
        None,
        "--export-sequences",
        metavar="FILE",
        help="Run the engines, write the sequences the reference would score to FILE "
        "(.parquet or .jsonl) for an external trainer, and judge nothing (every scenario "
        "unresolved: not judged, exit 125).",
    ),
    select: list[str] = typer.Option(
        [],
        "-k",
        metavar="PATTERN",
        help="Only scenarios whose name matches (substring or glob, any case); repeat for more.",
    ),
    category: list[str] = typer.Option(
        [], "--category", help="Only scenarios of this category; repeat for more."
    ),
    prompts: Optional[int] = typer.Option(
        None, "--prompts", help="Number of prompts of every scenario (a quick run)."
    ),
    max_tokens: Optional[int] = typer.Option(
        None, "--max-tokens", help="Max tokens per completion, every scenario."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed of every scenario."),
    json_out: bool = typer.Option(
        False, "--json", help="Print a machine summary (JSON) on stdout and nothing else there."
    ),
    junit_path: Optional[Path] = typer.Option(
        None, "--junit", metavar="PATH", help="Also write the JUnit XML to PATH."
    ),
    gate: list[str] = typer.Option(
        [],
        "--gate",
        metavar="NAME",
        help="A trainer framework (nemo-rl, prime-rl, verl) whose documented health gates "
        "must hold: findings of every scenario that scores tokens; repeat for more.",
    ),
):
    """Run scenarios and write report.json, report.md, report.html, junit.xml and tokens.parquet.

    Exit codes: 0 all as expected, 1 divergence, 2 usage or scenario error, 125 unresolved
    (an engine failed, or nothing was judged: --export-sequences) or inconclusive (too little
    data).
    """
    choose = dict(
        suite=suite,
        model=model,
        candidate=candidate,
        baseline=baseline,
        reference_device=reference_device,
        trainer=trainer,
        select=select,
        category=category,
        prompts=prompts,
        max_tokens=max_tokens,
        seed=seed,
    )
    mine = []
    if junit_path is not None and (junit_path.is_dir() or not junit_path.parent.is_dir()):
        mine.append(("--junit", "PATH", f"{junit_path}: give a file in an existing directory"))
    try:
        if dry_run:
            chosen = api.scenarios(
                targets or (),
                problems=mine + api.export_problems(export_sequences) + api.gate_problems(gate),
                **choose,
            )
            _print_plan(api.plan(chosen, log=log))
        every = float(os.environ.get("PARITY_PROGRESS_EVERY_S", "15"))  # lines in CI logs
        with Display(console, every_s=every) as display:
            run = api.check(
                targets or (),
                output=output,
                export_sequences=export_sequences,
                start_timeout=start_timeout,
                request_timeout=request_timeout,
                log=display.log,
                progress=display.progress,
                problems=mine,
                gates=gate,
                **choose,
            )
    except KeyboardInterrupt:
        fail("interrupted before any engine started: nothing to report", EXIT_UNRESOLVED)
    except ScenarioError as exc:
        report_problems(exc.problems)
    except EngineError as exc:
        fail(f"engine failure before any scenario ran: {exc}", EXIT_UNRESOLVED, exc)
    except (EnvError, ModelError) as exc:  # models/env build failures: one clear line
        fail(str(exc), EXIT_USAGE if getattr(exc, "usage", False) else EXIT_UNRESOLVED, exc)
    except PluginError as exc:  # an installed plugin that cannot be used: which one and why
        fail(str(exc), EXIT_USAGE, exc)
    _ci_outputs(run.report, run.out_dir, junit_path)
    shown = console if json_out else out  # --json: stdout carries the summary only
    files.print_table(run, shown)
    if run.export and run.export.get("sequences") is not None:
        shown.print(
            f"sequences exported: {run.export['file']} ({run.export['sequences']} "
            "sequences); nothing judged"
        )
    shown.print(
        f"report: {run.out_dir}/report.md (report.html, report.json, junit.xml, "
        f"tokens.parquet beside it); exit code {run.exit_code}"
    )
    if json_out:
        sys.stdout.write(json.dumps(summary.machine(run.report, run.out_dir), indent=1) + "\n")
        sys.stdout.flush()
    raise typer.Exit(run.exit_code)


def _ci_outputs(data: dict, out_dir: Path, junit_path: Optional[Path]) -> None:
    """--junit PATH and $GITHUB_STEP_SUMMARY; a failure is a warning, never the exit code."""
    if junit_path is not None:
        try:
            junit_path.write_text(junit.to_junit(data) + "\n")
        except OSError as exc:
            log(f"warning: cannot write --junit {junit_path}: {exc.strerror or exc}")
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        why = summary.append_step_summary(path, summary.markdown(data, out_dir))
        if why:
            log(f"warning: {why}")


def _print_plan(run: RunResult) -> None:
    """The dry run's engine plan and scenario sizes, then exit 0 (nothing started, no report;
    missing models and environments were built: their build time is the real run's)."""
    for e in run.engines:
        st = e["setting"]
        label = EngineSetting.make(
            st["engine"], st["env"], st["engine_args"], st["env_vars"], st["profile"], st.get("url")
        ).label()
        where = "" if st.get("url") or st["env"] == "harness" else f" in env {st['env']}"
        out.print(
            f"engine {e['n']}: {label}{where} on {Path(e['model']).name}: "
            f"{', '.join(e['scenarios'])}"
            + (f" (not started: {e['skipped']})" if e.get("skipped") else ""),
            highlight=False,
            markup=False,
        )
        for names in e.get("shared_generations") or ():
            out.print(
                f"  generated once, shared: {', '.join(names)} (same prompts and sampling)",
                highlight=False,
            )
    for res in run.results:
        sc, s = res.scenario, res.scenario.sampling
        out.print(
            f"scenario {sc.name} ({sc.category}): {len(res.prompts)} prompts x n={s.n}, "
            f"max_tokens {s.max_tokens} (<= {len(res.prompts) * s.n * s.max_tokens} "
            f"tokens per engine), seed {s.seed}, T {s.temperature}",
            highlight=False,
        )
    starting = sum(not e.get("skipped") for e in run.engines)
    out.print(
        f"dry run: {len(run.results)} scenario(s) valid, {starting} engine(s) would "
        "start; nothing started"
    )
    raise typer.Exit(0)
