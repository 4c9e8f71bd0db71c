"""Where parity keeps what it builds: models, engine environments, reference-score caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: `$PARITY_CACHE_DIR`, else `~/.cache/parity`. Created on first use."""
    root = Path(os.environ.get("PARITY_CACHE_DIR") or Path.home() / ".cache" / "parity")
    root.mkdir(parents=True, exist_ok=True)
    return root
