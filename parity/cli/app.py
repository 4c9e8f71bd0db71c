"""The `parity` Typer app and what every command shares: the consoles, the one way to fail with
an exit code, and the problem list of bad input. Commands live one per module beside this one
and register themselves on `app` (parity.cli imports them); this module imports none of them."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

import typer
from rich.console import Console
from rich.markup import escape

from parity.report.build import EXIT_USAGE

app = typer.Typer(
    help="Prove (or disprove) that two LLM inference backends behave the same for RL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="Build and list the models parity runs engines on.", no_args_is_help=True
)
env_app = typer.Typer(
    help="Isolated engine environments (e.g. the vLLM V0 virtualenv).", no_args_is_help=True
)
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


def fail(message: str, code: int, exc: BaseException | None = None) -> None:
    """Print one clear line (the traceback too under --debug) and exit with `code`."""
    console.print(f"[red]error:[/] {message}")
    if DEBUG["on"] and exc is not None:
        traceback.print_exception(exc)
    raise typer.Exit(code)


def log(message: str) -> None:
    """A progress or warning line on stderr, printed as is."""
    console.print(message, highlight=False, markup=False)


def report_problems(problems, where: str = "in the scenarios") -> None:
    """Every (file or option, field, message) problem, then exit 2."""
    console.print(f"[red]{len(problems)} problem(s) {where}:[/]", highlight=False)
    for file, field, message in problems:
        console.print(
            f"  {escape(str(file))}: [bold]{escape(str(field))}[/]: {escape(str(message))}",
            highlight=False,
        )
    raise typer.Exit(EXIT_USAGE)
