"""`parity serve`: a real `vllm serve` (vLLM's OpenAI-compatible server) configured by a profile
and its overrides, run by the profile's environment's Python, as a process group parity stops
with nothing left behind. Tests start their servers through the same class."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from parity.engines.base import EngineError, EngineSetting
from parity.engines.openai_engine import tail
from parity.engines.process import env_preloads, stop_group

# Variables parity's in-process worker reads to patch vLLM after load; a plain `vllm serve`
# never runs that worker code, so a profile relying on them cannot be served faithfully.
WORKER_PATCH_VARS = ("PARITY_FP32_HEAD", "PARITY_RELOAD_REPROCESS")


def serve_problems(setting: EngineSetting, where: str) -> list[tuple[str, str, str]]:
    """Why a setting cannot be served by `vllm serve` as parity would run it in process."""
    out = []
    if setting.engine != "vllm":
        out.append((where, "engine", f"{setting.engine!r}: only vLLM settings can be served"))
    for name in WORKER_PATCH_VARS:
        if setting.variables.get(name) not in (None, "", "0"):
            out.append(
                (
                    where,
                    f"env.{name}",
                    "a patch parity applies inside its own engine "
                    "worker; `vllm serve` cannot run it: serve a profile without it "
                    "(e.g. v1-parity has a native fp32 head)",
                )
            )
    return out


def flag(name: str, value: Any) -> list[str]:
    """An engine argument as `vllm serve` flags: True -> --name, False -> --no-name (vLLM's
    boolean options take both spellings), a table -> its JSON, anything else -> its text."""
    opt = "--" + name.replace("_", "-")
    if value is True:
        return [opt]
    if value is False:
        return ["--no-" + name.replace("_", "-")]
    if isinstance(value, (dict, list)):
        return [opt, json.dumps(value)]
    return [opt, str(value)]


def command(
    setting: EngineSetting,
    model_path: str,
    python: str,
    host: str,
    port: int,
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the server for a setting: its engine args as flags, its env vars
    (VLLM_USE_V1=0 selects V0 in the 0.8.5 environment), VLLM_SERVER_DEV_MODE=1 so that
    /server_info exposes the resolved configuration to parity's served engine."""
    argv = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_path),
        "--host",
        host,
        "--port",
        str(port),
    ]
    for name, value in setting.args.items():
        argv += flag(name, value)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the server must not import the harness's parity
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_SERVER_DEV_MODE="1")
    env.update(env_preloads(python))
    env.update(setting.variables)
    return argv, env


def _die_with_parent() -> None:
    """In the server's process before exec (Linux): SIGTERM when parity goes away, even by
    SIGKILL, so a killed `parity serve` leaves no server behind (best effort elsewhere)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """A `vllm serve` process group. Use as a context manager: start() waits until /health
    answers (EngineError with the log's last lines when the process exits or the timeout
    passes first), stop() terminates the whole group and waits for it."""

    def __init__(
        self,
        setting: EngineSetting,
        model_path: str,
        python: str,
        log_path: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
    ):
        self.setting = setting
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_path)
        self.argv, self.env = command(setting, model_path, python, host, self.port)
        self.proc: subprocess.Popen | None = None
        self.start_s: float | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 600.0) -> None:
        t0 = time.perf_counter()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(self.argv) + "\n").encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise EngineError(f"server: cannot run {self.argv[0]}: {exc}") from exc
        deadline = time.monotonic() + timeout
        try:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise EngineError(
                        f"server exited (code {code}) before it was healthy", tail(self.log_path)
                    )
                if self.healthy():
                    break
                if time.monotonic() > deadline:
                    raise EngineError(
                        f"server not healthy after {timeout:.0f}s", tail(self.log_path)
                    )
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.perf_counter() - t0

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError, ValueError):
            return False
        except Exception:  # http.client errors from a half-started server
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to the process group (vLLM shuts its engine core down), SIGKILL to whatever
        is left after `grace` seconds; returns when no process of the group remains."""
        if self.proc is None:
            return
        stop_group(self.proc, term_wait=grace, kill_wait=10.0)
