"""`parity serve`: a real `vllm serve` configured by a profile (parity.engines.serve)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from parity.cli.app import app, fail, log, out, report_problems
from parity.engines import serve as serving
from parity.engines.base import EngineError
from parity.engines.settings import parse_setting
from parity.report.build import EXIT_UNRESOLVED
from parity.setup import envs, inputs, models
from parity.setup.envspecs import EnvError
from parity.setup.modelbuild import ModelError
from parity.setup.models import MODEL_NAMES, is_built_name


@app.command()
def serve(
    setting: str = typer.Argument(
        ...,
        help="PROFILE[,arg=value,env.VAR=value,envname=ENV], "
        "e.g. v1-parity or v1-defaults,logprobs_mode="
        "processed_logprobs",
    ),
    model: str = typer.Option("smollm2-135m", help="Model to serve (name or checkpoint path)."),
    host: str = typer.Option(
        "127.0.0.1", help="Address to bind (the server's dev endpoints are on: keep it local)."
    ),
    port: Optional[int] = typer.Option(None, help="Port (default: a free one)."),
    log_file: Optional[Path] = typer.Option(
        None, "--log", help="Server log (default: results/serve-<port>.log)."
    ),
    start_timeout: float = typer.Option(600.0, help="Seconds the server may take to start."),
):
    """Start a real `vllm serve` with a profile's settings (the V0-parity fixes included; v0
    in the 0.8.5 environment), print its URL once healthy, stop it on Ctrl-C.

    Point a scenario at it (its candidate table: engine = "openai", url = "<URL>") or use
    `parity check --candidate <URL>`. Exit codes: 0 stopped by Ctrl-C/SIGTERM, 2 bad setting
    or model, 125 the server failed to start or died.
    """
    parsed, problems = parse_setting(setting, "SETTING")
    message = inputs.model_problem(model, MODEL_NAMES, is_built_name)
    if message:
        problems.append(("--model", "model", message))
    if port is not None and not 0 < port < 65536:
        problems.append(("--port", "value", f"{port}: must be in 1..65535"))
    if parsed is not None:
        problems += serving.serve_problems(parsed, "SETTING")
    if problems:
        report_problems(problems)
    try:
        model_path = str(models.resolve_model(model))
        python = envs.python_for(parsed.env, log)
    except (ModelError, EnvError) as exc:
        fail(str(exc), EXIT_UNRESOLVED, exc)
    port = port or serving.free_port(host)
    server = serving.Server(
        parsed, model_path, python, log_file or Path("results") / f"serve-{port}.log", host, port
    )
    log(f"starting {parsed.label()} on {Path(model_path).name}: {' '.join(server.argv)}")
    log(f"log: {server.log_path}")
    try:
        server.start(timeout=start_timeout)
        out.print(server.url, highlight=False)
        sys.stdout.flush()  # a script reading our stdout gets the URL now
        log(
            f"healthy in {server.start_s:.1f}s (pid {server.proc.pid}); scenarios: "
            f'[candidate] engine = "openai", url = "{server.url}", server_log = '
            f'"{server.log_path}"; Ctrl-C stops it'
        )
        while server.alive():
            time.sleep(1.0)
        code = server.proc.returncode
        fail(
            f"the server exited (code {code}); its log: {server.log_path}\n"
            + serving.tail(server.log_path),
            EXIT_UNRESOLVED,
        )
    except EngineError as exc:
        fail(str(exc), EXIT_UNRESOLVED, exc)
    except KeyboardInterrupt:
        log("stopping the server")
    finally:
        server.stop()
    raise typer.Exit(0)
