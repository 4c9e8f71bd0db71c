"""Progress of a generate call inside the engine worker: a stand-in for the tqdm bar vLLM's
offline generate loop drives, which sends each update to the harness over the worker's reply
pipe. Standard library only (the worker runs in other vLLM environments)."""

from __future__ import annotations

import time

# The harness's progress channel: serve() sets "send" (a reply-pipe writer) for the worker's life.
PROGRESS: dict = {"send": None, "every_s": 0.5}


def bar(*args, **kwargs):
    """A stand-in for tqdm in vLLM's generate loop: over an iterable (prompt rendering) it is
    the iterable; as the request bar it reports sequences done and output tokens/s."""
    return args[0] if args else ProgressBar(kwargs.get("total"))


class ProgressBar:
    """What vLLM's _run_engine uses of a tqdm bar: n, update, postfix, format_dict, refresh,
    close. Sends {"op": "progress", "done", "total", "elapsed_s", "out_tok_s"} at most every
    PROGRESS["every_s"] seconds, and once at the end."""

    def __init__(self, total: int | None):
        self.total, self.n, self.postfix = total, 0, ""
        self.t0 = self._last = time.monotonic()

    @property
    def format_dict(self) -> dict:
        return {"elapsed": max(time.monotonic() - self.t0, 1e-9)}

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= PROGRESS["every_s"]:
            self._send()

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        self._send()

    def _send(self) -> None:
        self._last = time.monotonic()
        speed = None
        if "output:" in str(self.postfix):
            try:
                speed = float(str(self.postfix).split("output:")[1].split("toks/s")[0])
            except ValueError:
                pass
        try:
            PROGRESS["send"](
                {
                    "ok": True,
                    "op": "progress",
                    "done": self.n,
                    "total": self.total,
                    "elapsed_s": self.format_dict["elapsed"],
                    "out_tok_s": speed,
                }
            )
        except Exception:  # progress is best effort: never the cause of a failed generate
            pass
