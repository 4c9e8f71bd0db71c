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

from parity.engines.base import EngineError, EngineSetting, SamplingSpec, Sequence
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


class VllmEngine:
    """The vLLM engine (V0 or V1, whichever the interpreter's vLLM and env vars select), run in
    a worker process. Implements parity.engines.base.Engine."""

    def __init__(
        self,
        setting: EngineSetting,
        model: str,
        python: str,
        log_path: Path,
        start_timeout: float = 600.0,
        request_timeout: float = 1800.0,
    ):
        self.setting = setting
        self.name = setting.label()
        self.model = model
        self.python = python
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.request_timeout = request_timeout
        self.start_s: float | None = None
        self._worker: WorkerProcess | None = None
        self._effective: dict[str, Any] | None = None
        self.checkpoint: str | None = None  # weights loaded by update_weights (None: `model`)
        self.on_progress = None  # called with the worker's progress messages during generate

    @property
    def pgid(self) -> int | None:
        """The worker's process group (the worker and everything it started), once started."""
        return self._worker.proc.pid if self._worker is not None else None

    def __enter__(self) -> "VllmEngine":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The worker must not import parity: make sure the harness's source tree is not on its path.
        env.pop("PYTHONPATH", None)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
        # V1 sends functions to its workers (collective_rpc; the in-place weight-update control)
        # only with pickle allowed on its local engine<->worker channel.
        env.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        env.update(env_preloads(self.python))
        env.update(self.setting.variables)
        return env

    def preload(self) -> None:
        """Start the worker process and have it import vLLM now (e.g. while another engine
        generates); start() then only creates the engine. No engine, no device memory."""
        if self._worker is None:
            self._worker = WorkerProcess(self.name, self.python, self._env(), self.log_path)
            self._worker.preload()

    def start(self) -> None:
        t0 = time.perf_counter()
        if self._worker is None:
            self._worker = WorkerProcess(self.name, self.python, self._env(), self.log_path)
        self._worker.ready(timeout=self.start_timeout)
        reply = self._worker.request(
            {"op": "start", "model": self.model, "engine_args": self.setting.args},
            timeout=self.start_timeout,
        )
        self._effective = reply["effective_config"]
        self.start_s = time.perf_counter() - t0

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Sequence]:
        self._require().on_progress = self.on_progress
        reply = self._require().request(
            {"op": "generate", "prompts": prompts, "sampling": sampling.to_dict()},
            timeout=self.request_timeout,
        )
        return [Sequence.from_dict(d) for d in reply["sequences"]]

    def reset_prefix_cache(self) -> bool:
        """Drop the engine's cached KV blocks (for probes that need a cold cache)."""
        return bool(
            self._require().request({"op": "reset_prefix_cache"}, timeout=self.request_timeout)[
                "reset"
            ]
        )

    def effective_config(self) -> dict[str, Any]:
        if self._effective is None:
            raise EngineError(f"engine {self.name} has not started")
        return self._effective

    def update_weights(
        self, checkpoint: str, mode: str = "keep", clear_cache: bool = False, via: str = "reload"
    ) -> dict[str, Any]:
        """Load the checkpoint directory's weights into the live engine between generate calls.

        Args:
            checkpoint: a safetensors checkpoint of the same architecture.
            mode: how requests in flight are treated ("keep" | "wait" | "abort"; V1's pause).
            clear_cache: also drop the prefix cache (KV computed with the old weights).
            via: "reload" (the engine's real reload path) or "inplace" (param.data.copy_ into
                the live parameters: the known-broken path, for negative controls).
        Returns:
            The update record: version (int, +1 per update), via, mechanism, pause_s, load_s,
            resume_s, latency_s, cache_cleared.
        """
        reply = self._require().request(
            {
                "op": "update_weights",
                "checkpoint": str(checkpoint),
                "mode": mode,
                "clear_cache": clear_cache,
                "via": via,
            },
            timeout=self.request_timeout,
        )
        self.checkpoint = str(checkpoint)
        return reply["update"]

    def generate_with_update(
        self,
        prompts: list[list[int]],
        sampling: SamplingSpec,
        checkpoint: str,
        after_tokens: int,
        mode: str = "keep",
        clear_cache: bool = False,
        via: str = "reload",
        ignore_eos: bool = False,
    ) -> tuple[list[Sequence], dict[str, Any]]:
        """Generate and update the weights in flight, once every running request has sampled
        `after_tokens` tokens (arguments as in update_weights).

        Returns:
            (sequences, record): each sequence's `weight_versions` gives the version that
            produced each token; the record is update_weights' plus `seen_at_request` per
            sequence (in `extra`), lag_tokens (tokens sampled under the old weights after the
            update was requested) and requested_after_s.
        """
        reply = self._require().request(
            {
                "op": "generate_with_update",
                "prompts": prompts,
                "sampling": sampling.to_dict(),
                "checkpoint": str(checkpoint),
                "after_tokens": after_tokens,
                "mode": mode,
                "clear_cache": clear_cache,
                "via": via,
                "ignore_eos": ignore_eos,
            },
            timeout=self.request_timeout,
        )
        self.checkpoint = str(checkpoint)
        return [Sequence.from_dict(d) for d in reply["sequences"]], {
            **reply["update"],
            "seen_at_request": [d["seen_at_request"] for d in reply["sequences"]],
        }

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def _require(self) -> WorkerProcess:
        if self._worker is None:
            raise EngineError(f"engine {self.name} is not running")
        return self._worker


_WARM: dict[str, WorkerProcess] = {}  # interpreter -> a validator importing vLLM already


def warm_validator(python: str, log_path: Path) -> None:
    """Start the validator of `python` now: it imports vLLM while the harness prepares the
    run; the next validate_engine_args for `python` uses it. close_warm() stops it unused."""
    if python not in _WARM:
        worker = _validator(python, log_path)
        worker.preload()
        _WARM[python] = worker


def close_warm() -> None:
    while _WARM:
        _WARM.popitem()[1].close()


def _validator(python: str, log_path: Path) -> WorkerProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(env_preloads(python))
    return WorkerProcess("validator", python, env, log_path)


def validate_engine_args(
    python: str, arg_sets: list[dict], log_path: Path, timeout: float = 180.0
) -> dict[str, Any]:
    """Check engine-arg names against the EngineArgs of the vLLM in `python`, starting no engine.

    Returns {"problems": [{"index", "name", "suggestions"}], "vllm_version": str}.
    """
    worker = _WARM.pop(python, None) or _validator(python, log_path)
    try:
        worker.ready(timeout=timeout)
        return worker.request({"op": "validate", "arg_sets": arg_sets}, timeout=timeout)
    finally:
        worker.close()


# One-shot: vllm_worker.read_model_facts in `python`, its JSON on the line after the marker.
# -I keeps the current directory (and so the harness's parity) off the interpreter's path.
_FACTS_MARKER = "PARITY-MODEL-FACTS "
_FACTS_CODE = (
    "import json, sys; sys.path.insert(0, sys.argv[1]); import vllm_worker; "
    "print(%r + json.dumps(vllm_worker.read_model_facts(sys.argv[2])), flush=True)" % _FACTS_MARKER
)


def read_model_facts(
    python: str, model_path: str | Path, log_path: Path, timeout: float = 180.0
) -> dict[str, Any]:
    """A checkpoint's model-identity facts as the transformers of `python` (an engine env) reads
    them, starting no engine (parity.engines.identity.read_facts run there; a few seconds).

    Returns:
        parity.engines.identity.MODEL_KEYS -> value, plus transformers_version, errors, config_json.
    Raises:
        EngineError: the interpreter cannot run, times out, or returns no facts (with the log).
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(env_preloads(python))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-I", "-c", _FACTS_CODE, str(WORKER_SCRIPT.parent), str(model_path)]
    with open(log_path, "ab") as log:
        try:
            done = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                timeout=timeout,
            )
        except OSError as exc:
            raise EngineError(f"model facts: cannot run {python}: {exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise EngineError(
                f"model facts: {python} timed out after {timeout:.0f}s", tail(log_path)
            ) from exc
        out = done.stdout.decode("utf-8", "replace")
        log.write(
            "".join(
                line for line in out.splitlines(True) if not line.startswith(_FACTS_MARKER)
            ).encode()
        )
    for line in out.splitlines():
        if line.startswith(_FACTS_MARKER):
            return json.loads(line[len(_FACTS_MARKER) :])
    raise EngineError(
        f"model facts: {python} exited (code {done.returncode}) without facts", tail(log_path)
    )
