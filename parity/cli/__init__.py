"""The `parity` command line: one module per command over the Python API (parity.api)."""

from parity.cli import tools  # noqa: F401  (registers its commands on the app)
from parity.cli.app import app  # noqa: F401
