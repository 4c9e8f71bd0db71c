"""Faults after the engines ran must not cost the report (its files are written atomically:
parity.data.atomic): the root cause of an engine failure dug out of the engine's log, and an "unresolved" verdict (never
a pass) for every scenario a fault kept from its verdict."""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import Iterable

from parity.verdicts import core
from parity.verdicts.core import Verdict

# Lines that only point elsewhere (vLLM: "Engine core initialization failed. See root cause
# above."): never the root cause themselves.
GENERIC = (
    "See root cause above",
    "Engine core initialization failed",
    "EngineCore failed to start",
    "encountered a fatal error",
)
MAX_CAUSE_CHARS = 400
# "(EngineCore_DP0 pid=12) " and "[rank0]: " in front of what a process logs.
_PREFIX = re.compile(r"^(?:\([^()]*pid=\d+\)\s*|\[rank\d+\]:\s*)+")
# vLLM's logger: "ERROR 03-01 10:00:00 [core.py:708] message".
_LOGGED = re.compile(r"^(?:ERROR|CRITICAL)\s+[^\[]*\[[^\]\s]+:\d+\]\s?(?P<msg>.*)$")
# The last line of a traceback: "RuntimeError: ...", "torch.OutOfMemoryError: ...".
_RAISED = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)(?::\s.*)?$")
_TRACEBACK = (
    "Traceback (most recent call last)",
    'File "',
    "The above exception",
    "During handling of the above exception",
)


def describe(exc: BaseException) -> str:
    """'Type: message (at file.py:12 in function)': an unexpected exception in one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = (
        f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})"
        if frames
        else ""
    )
    return f"{type(exc).__name__}: {exc}{where}"


def internal_error(exc: BaseException) -> str:
    """What RunResult.interrupted says when a harness bug stopped part of a run."""
    return f"internal error: {describe(exc)}"


def log_size(path: Path) -> int:
    """Bytes in a log so far (0 when absent): where this run's part of an appended log starts."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _cause(line: str) -> tuple[int, str] | None:
    """(rank, text) when a log line may say why an engine failed: rank 0 for an exception line,
    1 for an ERROR log message; None for anything else (tracebacks, generic summaries)."""
    text = _PREFIX.sub("", line.rstrip())
    logged = _LOGGED.match(text)
    msg = logged["msg"] if logged else text
    if not msg or msg[0].isspace() or any(g in msg for g in GENERIC):
        return None
    if _RAISED.match(msg):
        return 0, msg
    if logged and not msg.startswith(_TRACEBACK):
        return 1, msg
    return None


def first_cause(lines: Iterable[str]) -> str | None:
    """The root cause among log lines: the first exception line that is not a generic summary,
    else the first such ERROR message; None when there is neither."""
    fallback = None
    for line in lines:
        found = _cause(line)
        if found is None:
            continue
        rank, msg = found
        if rank == 0:
            return msg[:MAX_CAUSE_CHARS]
        fallback = fallback or msg[:MAX_CAUSE_CHARS]
    return fallback


def root_cause(log_path: str | Path, offset: int = 0) -> str | None:
    """The root cause in an engine log, read from byte `offset` (this run's part of it)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            return first_cause(raw.decode("utf-8", "replace") for raw in fh)
    except OSError:
        return None


def engine_failure(role: str, error: str, log_path: str | None, offset: int = 0) -> str:
    """The message of an "engine_failed" verdict: what failed, why (the root cause from the
    engine's log, else from the error text), and where the log is."""
    lines = error.splitlines() or [error]
    cause = (root_cause(log_path, offset) if log_path else None) or first_cause(lines[1:])
    parts = [f"{role} engine failed: {lines[0]}"]
    if cause and cause not in lines[0]:
        parts.append(f"root cause: {cause}")
    elif not cause and log_path and any(g in lines[0] for g in GENERIC):  # points at the log
        parts.append("no root cause found in the engine log")
    if log_path:
        parts.append(f"log: {log_path}")
    return "; ".join(parts)


def engine_verdict(res) -> Verdict | None:
    """An "unresolved" verdict when an engine the scenario (a runner.ScenarioResult) needs
    failed or never ran; None when all of them produced something to judge."""
    for role in res.scenario.settings():  # a refusal explains the other roles' absence
        er = res.runs.get(role)
        if er is not None and er.extra.get("refused"):
            return core.unresolved(
                "refused_here",
                f"{role} engine cannot run on this machine (not started): {er.extra['refused']}",
            )
    for role in res.scenario.settings():
        er = res.runs.get(role)
        if er is None:
            return core.unresolved("engine_failed", f"{role} engine failed: the engine did not run")
        if er.error:
            return core.unresolved(
                "engine_failed", engine_failure(role, er.error, er.log_path, er.log_offset)
            )
        if not er.sequences and not er.extra.get("probe_error"):
            return core.unresolved("no_samples", f"{role} engine returned no sequences")
    return None


def mark_unfinished(results, why: str) -> None:
    """After a run stopped early (RunResult.interrupted = `why`): every engine role that was cut
    off before producing anything says so, rather than "returned no sequences"."""
    for res in results:
        for er in res.runs.values():
            if not (er.sequences or er.error or er.extra):
                er.error = f"not finished: {why}"


def not_judged(interrupted: str | None) -> Verdict:
    """The verdict reported for a scenario the run stopped before judging (never a pass)."""
    why = f" ({interrupted})" if interrupted else ""
    return core.unresolved("not_judged", f"not judged: interrupted{why}")
