"""The `parity` command line: one module per command, each registering itself on the Typer app
of parity.cli.app (which imports none of them); this package imports them all."""

from parity.cli import bench, bisect, check, diff, env, judge, models, report, serve  # noqa: F401
from parity.cli.app import app  # noqa: F401
