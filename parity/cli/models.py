"""`parity models ...`: build, list and perturb the models parity runs engines on."""

from __future__ import annotations

import typer

from parity.cli.app import fail, log, models_app, out
from parity.report.build import EXIT_USAGE
from parity.setup.modelbuild import ModelError
from parity.setup.models import MODEL_NAMES, build_model, model_dir, perturb


@models_app.command("build")
def models_build(
    name: str = typer.Argument(..., help="tiny | smollm2-135m"),
    force: bool = typer.Option(False, help="Rebuild even if present."),
):
    """Build a model into the cache (idempotent)."""
    try:
        path = build_model(name, force=force, log=log)
    except ModelError as exc:
        fail(str(exc), EXIT_USAGE, exc)
    out.print(str(path))


@models_app.command("list")
def models_list():
    """List the built-in models and whether they are built."""
    for name in MODEL_NAMES:
        path = model_dir(name)
        state = "built" if path.exists() else "not built"
        out.print(f"{name:16s} {state:10s} {path}")


@models_app.command("perturb")
def models_perturb(
    base: str = typer.Argument(..., help="Model name or path."),
    seed: int = typer.Option(0),
    scale: float = typer.Option(0.05),
):
    """A second checkpoint of the same architecture with deterministic noise."""
    try:
        out.print(str(perturb(base, seed=seed, scale=scale)))
    except ModelError as exc:
        fail(str(exc), EXIT_USAGE, exc)
