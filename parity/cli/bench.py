"""`parity bench ...`: the benchmarks (parity.bench): where a run's time goes, the metrics at
1M tokens, reference scoring at a real shape, CPU binding, run-to-run noise."""

from __future__ import annotations

import typer

from parity.bench.main import main as bench_main
from parity.cli.app import app


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
    add_help_option=False,
)
def bench(ctx: typer.Context):
    """Benchmarks: table RUN_DIR | run CHECK-ARGS | metrics | reference | bind | noise
    (`parity bench --help` lists their options; measure with these, never with timed tests)."""
    bench_main(list(ctx.args))
