"""Wall time spent building things (models, perturbed checkpoints, engine environments), so a
run can report builds as their own phase instead of harness overhead (parity.bench table).

A module-level accumulator: the build code wraps the part that really builds (never a cache
hit) in `building()`; the runner reads `build_seconds()` before and after each phase."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

_total = 0.0
_depth = 0  # a build inside a build (perturb resolving its base) is counted once


@contextmanager
def building() -> Iterator[None]:
    """Count the wall time of the enclosed block as build time (nested blocks once)."""
    global _total, _depth
    _depth += 1
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _total += time.perf_counter() - t0


def build_seconds() -> float:
    """Seconds spent in `building()` blocks in this process so far."""
    return _total


def lap(t0: float, b0: float) -> float:
    """Seconds since perf_counter() read t0, less the build time since build_seconds() read b0."""
    return time.perf_counter() - t0 - (build_seconds() - b0)
