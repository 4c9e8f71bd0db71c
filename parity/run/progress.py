"""What moves on screen during a run. On a terminal: rich's live display, a spinner with the
current phase (engine start, generation, scoring: the run's log lines) and its elapsed time,
and a bar of requests done and output tokens/s while an engine generates. Elsewhere (a pipe,
a CI log): the log lines as they come, plus one plain progress line per generate call at most
every `every_s` seconds, never wrapped."""

from __future__ import annotations

import time
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


class Display:
    """Use as a context manager; pass `log` as the run's log and `progress` as its progress."""

    def __init__(self, console, live: bool | None = None, every_s: float = 15.0):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.every_s = every_s
        self._bar = None
        self._phase = None
        self._tasks: dict[tuple[str, str], Any] = {}
        self._last: dict[tuple[str, str], float] = {}

    def __enter__(self) -> "Display":
        if self.live:
            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[speed]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
            self._phase = self._bar.add_task("preparing", total=None, speed="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)
        if self._bar is not None and message.strip():
            self._bar.reset(self._phase, description=_short(message), total=None, speed="")

    def progress(self, event: dict[str, Any]) -> None:
        key = (str(event.get("scenario")), str(event.get("role")))
        done, total = event.get("done") or 0, event.get("total")
        speed = event.get("out_tok_s")
        text = f"{speed:.1f} tok/s" if isinstance(speed, (int, float)) else ""
        if self._bar is not None:
            if key not in self._tasks:
                self._tasks[key] = self._bar.add_task(f"{key[0]} [{key[1]}]", total=total, speed="")
            self._bar.update(self._tasks[key], completed=done, total=total, speed=text)
            if total is not None and done >= total:
                self._bar.remove_task(self._tasks.pop(key))
            return
        now = time.monotonic()
        # The last event of a call always prints: an engine that finishes a whole batch in one
        # step (V0 0.8.5) sends its first update and its last within the throttle interval. A
        # call of one request is the exception: the runtime probes make dozens (cold and warm
        # cache, batch 1), and the scenario's own log line follows them.
        finished = total is not None and done >= total and total > 1
        if finished or now - self._last.setdefault(key, now) >= self.every_s:
            self._last[key] = now
            self.console.print(
                f"  {key[0]} [{key[1]}]: {done}/{total} requests, "
                f"{event.get('elapsed_s', 0):.0f}s" + (f", {text}" if text else ""),
                highlight=False,
                markup=False,
            )


def _short(message: str, width: int = 70) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"
