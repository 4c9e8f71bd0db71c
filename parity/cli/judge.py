"""`parity judge FILE`: a per-token table a trainer dumped, judged like the logprobs category
(parity.api.judge); no engine starts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from parity import api
from parity.cli.app import app, fail, out, report_problems
from parity.report import judge_report
from parity.report.build import EXIT_USAGE
from parity.run.scenario import ScenarioError


@app.command()
def judge(
    file: Path = typer.Argument(
        ...,
        help="Per-token table: .parquet, .csv, .jsonl/.json or "
        ".pt (a torch.save'd dict of tensors).",
    ),
    fmt: Optional[str] = typer.Option(
        None,
        "--format",
        help="Column names of: parity (default), verl, trl, prime-rl, nemo-rl; that "
        "framework's own health numbers come first in the reports.",
    ),
    maps: list[str] = typer.Option(
        None,
        "--map",
        help="canonical=column, e.g. engine_logprob=rollout_lp (repeatable; canonical= for none).",
    ),
    tolerance: list[str] = typer.Option(
        None,
        "--tolerance",
        help="name=value: abs_dlogp_mean, kl_k3_mean, abs_dlogp_p99, excluded_rate (repeatable).",
    ),
    clip_low: Optional[float] = typer.Option(
        None, help="PPO clip eps_low for the clip-rate metrics (default 0.2)."
    ),
    clip_high: Optional[float] = typer.Option(None, help="PPO clip eps_high (default 0.28)."),
    min_tokens: Optional[int] = typer.Option(
        None, help="Fewer scored tokens: inconclusive (default: as scenarios, 200)."
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Report directory (default results/judge-<UTC stamp>/)."
    ),
    trainer: Optional[str] = typer.Option(
        None,
        "--trainer",
        help="The framework that computed the trainer column: verl, trl, openrlhf, prime-rl "
        "(tempered), nemo-rl, processed-replay (processed); recorded in report.json.",
    ),
    gate: list[str] = typer.Option(
        [],
        "--gate",
        metavar="NAME",
        help="A trainer framework (nemo-rl, prime-rl, verl) whose documented health gates "
        "must hold: findings of every group; repeat for more.",
    ),
):
    """Judge a per-token table dumped by a trainer (verl, TRL, prime-rl, NeMo-RL, parity's own
    tokens.parquet): engine vs trainer logprobs, as the logprobs category; no engine starts.

    Exit codes: 0 every group passes, 1 any fails, 2 bad input (every problem listed),
    125 inconclusive (too little data).
    """
    try:
        done = api.judge(
            file,
            fmt=fmt,
            maps=maps or (),
            tolerances=tolerance or (),
            clip_low=clip_low,
            clip_high=clip_high,
            min_tokens=min_tokens,
            output=output,
            trainer=trainer,
            gates=gate,
        )
    except ScenarioError as exc:
        report_problems(exc.problems, f"with {file}")
    except OSError as exc:
        fail(str(exc), EXIT_USAGE, exc)
    judge_report.print_table(done.report, out)
    out.print(
        f"report: {done.out_dir}/report.md (json, junit.xml beside it); exit code {done.exit_code}"
    )
    raise typer.Exit(done.exit_code)
