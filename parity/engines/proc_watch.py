"""Harness-side: notice that an engine's own processes died while its worker waits.

vLLM V1 runs its engine core (and the core's workers) in processes it names "VLLM::EngineCore",
"VLLM::Worker..." (their /proc comm). When the core dies in the middle of a generate call, the
client in parity's worker waits for its outputs forever: the harness then saw nothing until the
request timeout (1800 s by default; docs/measurements.md#dead-engine-core). A core that dies
between calls is noticed by vLLM itself (EngineDeadError at the next call), and so is a worker
killed under a live core; this watch is for the rest.

The watch records every such process of the worker's process group it sees, and reports one
that is gone (or a zombie) once `grace` seconds passed without the worker answering: long
enough for vLLM to report the death itself, with its own message, when it does.

Linux only (/proc); elsewhere it sees no process and never fires.
"""

from __future__ import annotations

import os
import time

ENGINE_PROCESS_PREFIX = "VLLM::"
GRACE_ENV = "PARITY_ENGINE_DEATH_GRACE"
DEFAULT_GRACE_S = 10.0
SCAN_EVERY_S = 1.0


def grace_from_env() -> float:
    """Seconds from an engine process's death to the harness's verdict ($PARITY_ENGINE_DEATH_GRACE)."""
    try:
        return max(0.0, float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S)))
    except ValueError:
        return DEFAULT_GRACE_S


def group_processes(pgid: int) -> dict[int, tuple[str, str]]:
    """{pid: (comm, state)} of every process in process group `pgid` ({} without /proc)."""
    found: dict[int, tuple[str, str]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is not None and stat[2] == pgid:
            found[int(entry)] = (stat[0], stat[1])
    return found


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, pgrp) from /proc/<pid>/stat; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    comm = text[text.find("(") + 1 : text.rfind(")")]
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return comm, fields[0], int(fields[2])
    except (IndexError, ValueError):
        return None


class EngineProcessWatch:
    """The engine processes of one worker's process group, as seen over its life."""

    def __init__(self, pgid: int, grace: float):
        self.pgid = pgid
        self.grace = grace
        self.seen: dict[int, str] = {}  # pid -> comm of every engine process seen alive
        self._dead: tuple[int, str, float] | None = None  # (pid, comm, noticed at)
        self._scanned = float("-inf")

    def check(self, now: float | None = None) -> str | None:
        """None while every engine process seen is alive, or one died less than `grace`
        seconds ago; else which one died, in words. Scans /proc at most once a second."""
        now = time.monotonic() if now is None else now
        if now - self._scanned >= SCAN_EVERY_S:
            self._scanned = now
            self._scan(now)
        if self._dead is None or now - self._dead[2] < self.grace:
            return None
        pid, comm, _ = self._dead
        return f"its vLLM process {comm} (pid {pid}) died"

    def _scan(self, now: float) -> None:
        engine = {
            pid: (comm, state)
            for pid, (comm, state) in group_processes(self.pgid).items()
            if comm.startswith(ENGINE_PROCESS_PREFIX)
        }
        alive = {pid for pid, (_, state) in engine.items() if state not in ("Z", "X")}
        for pid in alive:
            self.seen.setdefault(pid, engine[pid][0])
        if self._dead is None:
            # seen alive and now gone, or a zombie (dead, not yet reaped) seen for the first time
            gone = [(pid, comm) for pid, comm in self.seen.items() if pid not in alive]
            gone += [(pid, comm) for pid, (comm, _) in engine.items() if pid not in alive]
            if gone:
                self._dead = (*gone[0], now)
