"""Runs an engine worker in its own process (own interpreter, own environment) and talks to it
over pipes; turns crashes, hangs and bad starts into EngineError with the log tail, and never
leaves a process behind."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from parity.engines.base import EngineError
from parity.engines.proc_watch import EngineProcessWatch, grace_from_env
from parity.engines.vllm_registry import MODELINFO_DIR_ENV
from parity.setup.paths import cache_dir
from parity.setup.preloads import PreloadError, process_vars

WORKER_SCRIPT = Path(__file__).with_name("vllm_worker.py")
LOG_TAIL_LINES = 30

_live: set["WorkerProcess"] = set()


def _kill_all_live() -> None:
    for proc in list(_live):
        proc.kill()


atexit.register(_kill_all_live)


def stop_group(proc: subprocess.Popen, term_wait: float, kill_wait: float) -> None:
    """SIGTERM to the process group led by `proc`, SIGKILL to whatever is left after
    `term_wait` seconds; returns once no process of the group remains (or `kill_wait` more
    seconds passed) and `proc` is reaped."""
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, kill_wait)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            proc.poll()
            time.sleep(0.1)
        else:
            continue
        break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def env_preloads(python: str) -> dict[str, str]:
    """LD_PRELOAD for a process run by `python`: the libraries its environment's vLLM refuses
    to start without (parity.setup.preloads; recorded when the environment was built)."""

    try:
        return process_vars(python)
    except PreloadError as exc:
        raise EngineError(str(exc)) from exc


def cache_vars() -> dict[str, str]:
    """Where a worker keeps what depends only on its vLLM and the model class: V0's model
    inspection (vllm_registry), under parity's cache directory."""
    return {MODELINFO_DIR_ENV: str(cache_dir() / "vllm-modelinfo")}


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class WorkerProcess:
    """A worker script run by `python`, in its own session (process group), logging to `log_path`.

    Requests go to the worker's stdin, replies come back on a dedicated pipe, so whatever the
    engine prints cannot corrupt the protocol.
    """

    def __init__(
        self,
        name: str,
        python: str,
        env: dict[str, str],
        log_path: Path,
        script: Path = WORKER_SCRIPT,
    ):
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        self._log = open(log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [python, "-u", str(script), "--reply-fd", str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            self._log.close()
            raise EngineError(f"engine {name}: cannot run {python}: {exc}") from exc
        os.close(write_fd)
        self._reply = os.fdopen(read_fd, "r")
        self._buffer = ""
        self._pending: str | None = None  # the op of a request whose reply has not been read
        self._preloading = False  # a preload request whose reply ready() still has to read
        self.on_progress = None  # called with each progress message of a running request
        self._watch = EngineProcessWatch(self.proc.pid, grace_from_env())
        _live.add(self)

    def request(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait for its reply; EngineError on crash, hang or error reply."""
        self.send(payload)
        return self.read(payload.get("op"), timeout)

    def send(self, payload: dict[str, Any]) -> None:
        """Send one request; its reply is read later with read(op)."""
        self._pending = payload.get("op")
        try:
            self.proc.stdin.write((json.dumps(payload) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail(f"engine {self.name} died before request {payload.get('op')!r}")

    def preload(self) -> None:
        """Have the worker import vLLM now; ready() waits for it."""
        self.send({"op": "preload"})
        self._preloading = True

    def ready(self, timeout: float) -> None:
        """Wait for the worker's hello, and for its vLLM import when preload() asked for it."""
        self.read("hello", timeout=120)
        if self._preloading:
            self._preloading = False
            self.read("preload", timeout=timeout)

    def read(self, op: str | None, timeout: float) -> dict[str, Any]:
        """The reply to `op`; progress messages that come first go to on_progress."""
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self._line(op, deadline, timeout))
            if reply.get("op") != "progress" or op == "progress":
                break
            if self.on_progress is not None:
                self.on_progress(reply)
        self._pending = None
        if not reply.get("ok"):
            raise EngineError(
                f"engine {self.name}: {op} failed: {reply.get('error')}", tail(self.log_path)
            )
        return reply

    def _line(self, op: str | None, deadline: float, timeout: float) -> str:
        while "\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                self._fail(f"engine {self.name} timed out after {timeout:.0f}s in {op!r}")
            # on "close" the engine's processes end on purpose
            dead = self._watch.check() if op != "close" else None
            if dead is not None:
                self._fail(
                    f"engine {self.name}: {dead} during {op!r}, and the engine did not answer"
                    f" in the {self._watch.grace:.0f}s after (vLLM's client can wait for a dead"
                    " engine core forever)"
                )
            ready, _, _ = select.select([self._reply], [], [], min(remaining, 1.0))
            if ready:
                chunk = os.read(self._reply.fileno(), 1 << 20).decode()
                if not chunk:
                    code = self.proc.wait(timeout=10)
                    self._fail(f"engine {self.name} exited (code {code}) during {op!r}")
                self._buffer += chunk
            elif self.proc.poll() is not None:
                self._fail(f"engine {self.name} exited (code {self.proc.returncode}) during {op!r}")
        line, self._buffer = self._buffer.split("\n", 1)
        return line

    def _fail(self, message: str) -> None:
        self.kill()
        raise EngineError(message, tail(self.log_path))

    def close(self, timeout: float = 30.0) -> None:
        """Ask the worker to stop, then make sure its whole process group is gone. A worker
        still busy with an interrupted request (SIGINT/SIGTERM mid-generate) is not asked: its
        next reply would be the old request's, after it finished."""
        if self.proc.poll() is None and self._pending is None:
            try:
                self.request({"op": "close"}, timeout=timeout)
            except EngineError:
                pass
        self.kill()

    def kill(self) -> None:
        """Terminate the worker and every process in its group (engine cores, workers)."""
        stop_group(self.proc, term_wait=5.0, kill_wait=5.0)
        for fh in (self.proc.stdin, self._reply, self._log):
            try:
                fh.close()
            except OSError:
                pass
        _live.discard(self)
