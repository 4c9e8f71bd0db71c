"""A served engine: a vLLM OpenAI-compatible server parity did not start, driven over HTTP
(openai_wire.py: the /v1/completions request and answer); its configuration is what the server
exposes. Standard library only (urllib, threads), so it adds no dependency and imports instantly."""

from __future__ import annotations

import http.client
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from parity.engines.base import EngineError, EngineSetting, SamplingSpec, Sequence
from parity.engines.openai_config import served_config
from parity.engines.openai_updates import HttpUpdater, endpoints_from_schema, rl_summary
from parity.engines.openai_wire import parse_completion, request_body

__all__ = ["OpenAIEngine", "tail"]

LOG_TAIL_LINES = 30


def tail(path: str | Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file ('' when there is none)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# A URL where nothing listens refuses every connection at once; waiting the whole start timeout
# (600 s) for it helps no one. vLLM's server binds its port before the engine loads but listens
# only once it is up, so a server that is still starting refuses too: start it first (`parity
# serve` prints the URL once healthy) or raise the grace ($PARITY_CONNECT_GRACE, seconds).
REFUSED_GRACE_S = 10.0


def _nothing_listens(url: str, grace: float) -> str:
    return (
        f"nothing listens at {url}: the connection was refused on every try for {grace:.0f}s. "
        "Check the host and port, and start the server before parity (`parity serve PROFILE` "
        "prints its URL once healthy); a vLLM server refuses connections until its engine has "
        "loaded, so for one that is still starting set PARITY_CONNECT_GRACE=SECONDS"
    )


class OpenAIEngine:
    """A served vLLM engine (V1, or V0 0.8.5's server) behind its OpenAI-compatible API.
    Implements parity.engines.base.Engine: generation, and weight updates from a checkpoint on
    disk through vLLM's RL endpoints (parity/engines/openai_updates.py) where the server has
    them (which it has is read from its OpenAPI schema at start, `rl_endpoints`).

    Args:
        setting: engine "openai" with `url`, `api_key_env` (the variable holding the key) and
            `server_log` (the server's log file, quoted in errors when given).
        model: the checkpoint the trainer loads (the served model is checked against it by name
            when the server lists several).
        python: unused (nothing runs locally); kept for the registry's signature.
        log_path: parity's client log for this engine (requests, replies, errors).
        start_timeout: seconds the server may take to answer /health and /v1/models.
        request_timeout: seconds one generate call (all its requests together) may take.
        concurrency: requests in flight at once (the server batches them).
        update_timeout: seconds one call of a weight update (pause, load, resume) may take.
        refused_grace: seconds a refused connection may persist at start before it is an error
            (nothing listens at the URL; default $PARITY_CONNECT_GRACE, else REFUSED_GRACE_S);
            a server that answers anything, even an error, gets the whole start_timeout.
    """

    def __init__(
        self,
        setting: EngineSetting,
        model: str,
        python: str,
        log_path: Path,
        start_timeout: float = 600.0,
        request_timeout: float = 1800.0,
        concurrency: int = 64,
        update_timeout: float = 600.0,
        refused_grace: float | None = None,
    ):
        self.setting = setting
        self.name = setting.label()
        self.model = model
        self.url = (setting.url or "").rstrip("/")
        self.log_path = Path(log_path)
        self.start_timeout = start_timeout
        self.request_timeout = request_timeout
        self.concurrency = concurrency
        self.on_progress = None  # called (main thread) as requests finish during generate
        self.update_timeout = update_timeout
        self.refused_grace = (
            refused_grace
            if refused_grace is not None
            else float(os.environ.get("PARITY_CONNECT_GRACE") or REFUSED_GRACE_S)
        )
        self.rl_endpoints: dict[str, Any] | None = None
        self.weight_version = 0
        self.checkpoint: str | None = None  # None: the weights the server started with
        self.update_via: str | None = None
        self.start_s: float | None = None
        self.served_model: str | None = None
        self.pgid = None  # parity started no process for it
        self._effective: dict[str, Any] | None = None
        self._key = os.environ.get(setting.api_key_env) if setting.api_key_env else None

    def __enter__(self) -> "OpenAIEngine":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _log(self, message: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    def _error(self, message: str) -> EngineError:
        """An EngineError with the server's log tail (when known), else parity's client log."""
        self._log(f"ERROR {message}")
        server_tail = tail(self.setting.server_log)
        if server_tail:  # parity's engine log (the report's) keeps the server's last lines
            self._log(f"--- server log {self.setting.server_log} (last lines) ---\n{server_tail}")
        return EngineError(f"engine {self.name}: {message}", server_tail or tail(self.log_path))

    def _http(
        self,
        method: str,
        path: str,
        body: dict | None,
        timeout: float,
    ) -> tuple[int, bytes]:
        """(status, body) of one request; OSError/URLError on a connection problem."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self._key:
            req.add_header("Authorization", f"Bearer {self._key}")
        try:
            with urllib.request.urlopen(req, timeout=max(timeout, 0.1)) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _json(
        self, method: str, path: str, body: dict | None, timeout: float, optional: bool = False
    ) -> Any:
        """The JSON answer of one request. EngineError on a refused connection, a timeout, an
        HTTP error (unless `optional`: None for 404/401/403/405) or a body that is not JSON."""
        try:
            status, raw = self._http(method, path, body, timeout)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out,
            # cut off mid-answer, or not HTTP at all
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                what = f"did not answer within {timeout:.0f}s"
            elif isinstance(exc, urllib.error.URLError):  # could not connect or send
                what = "is unreachable"
            else:
                what = "broke off the connection"
            raise self._error(
                f"{method} {path}: the server {what} ({type(reason).__name__}: {reason})"
            ) from exc
        if status != 200:
            if optional and status in (401, 403, 404, 405):
                self._log(f"{method} {path}: HTTP {status} (not exposed)")
                return None
            hint = " (check api_key_env)" if status in (401, 403) else ""
            raise self._error(
                f"{method} {path}: HTTP {status}{hint}: {raw[:300].decode('utf-8', 'replace')}"
            )
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise self._error(
                f"{method} {path}: the server answered garbage, not JSON: {raw[:200]!r}"
            ) from exc

    # ------------------------------------------------------------------ Engine

    def start(self) -> None:
        """Wait for /health, pick the served model, read what the server exposes of its
        configuration. EngineError when it does not answer within start_timeout."""
        t0 = time.perf_counter()
        self._log(f"engine {self.name}: connecting (model {self.model})")
        deadline = time.monotonic() + self.start_timeout
        refused_since = None  # a refused connection that persists: nothing listens there
        while True:
            try:
                status, _ = self._http("GET", "/health", None, min(10.0, self.start_timeout))
                if status in (200, 404):  # 404: a server without /health; /v1/models decides
                    break
                why, refused_since = f"HTTP {status}", None
            except (OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                why = str(reason) or type(exc).__name__
                if not isinstance(reason, ConnectionRefusedError):
                    refused_since = None
                elif refused_since is None:
                    refused_since = time.monotonic()
                elif time.monotonic() - refused_since > self.refused_grace:
                    raise self._error(_nothing_listens(self.url, self.refused_grace)) from exc
            if time.monotonic() > deadline:
                raise self._error(
                    f"GET /health: not healthy after {self.start_timeout:.0f}s ({why})"
                )
            time.sleep(0.5)
        models = self._json("GET", "/v1/models", None, self.start_timeout)
        entries = models.get("data") if isinstance(models, dict) else None
        if (
            not isinstance(entries, list)
            or not entries
            or not all(isinstance(e, dict) and isinstance(e.get("id"), str) for e in entries)
        ):
            raise self._error(f"GET /v1/models: the server answered garbage: {str(models)[:200]}")
        entry = _pick_model(entries, self.model)
        if entry is None:
            raise self._error(
                "the server serves several models and none is "
                f"{self.model}: " + ", ".join(e["id"] for e in entries)
            )
        self.served_model = entry["id"]
        version = self._json("GET", "/version", None, self.start_timeout, optional=True)
        info = self._json(
            "GET", "/server_info?config_format=json", None, self.start_timeout, optional=True
        )
        self._effective = served_config(entry, version, info, self.url)
        self.rl_endpoints = self._probe_rl_endpoints()
        self._effective["rl_endpoints"] = self.rl_endpoints
        self.start_s = time.perf_counter() - t0
        self._log(
            f"engine {self.name}: serving {self.served_model!r}, vLLM "
            f"{self._effective['key'].get('vllm_version')}"
        )

    def effective_config(self) -> dict[str, Any]:
        if self._effective is None:
            raise EngineError(f"engine {self.name} has not started")
        return self._effective

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Sequence]:
        """One /v1/completions request per prompt (prompt i seeded seed + i, n samples), sent
        concurrently; sequences ordered by (prompt_index, sample_index)."""
        if self.served_model is None:
            raise EngineError(f"engine {self.name} is not running")
        deadline = time.monotonic() + self.request_timeout
        results: list[Any] = [None] * len(prompts)
        todo = queue.SimpleQueue()
        for i in range(len(prompts)):
            todo.put(i)
        done = threading.Condition()
        failures: list[BaseException] = []

        def work() -> None:
            # Daemon threads: one stuck on a hung server must not keep parity from exiting.
            while not failures:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    value = self._complete(i, prompts[i], sampling, deadline)
                except BaseException as exc:  # handed to the caller below
                    value = exc
                with done:
                    if isinstance(value, BaseException):
                        failures.append(value)
                    results[i] = value
                    done.notify_all()

        for _ in range(max(1, min(self.concurrency, len(prompts)))):
            threading.Thread(target=work, daemon=True).start()
        t0 = last = time.monotonic()
        with done:
            while not failures and any(r is None for r in results):
                if (
                    not done.wait(timeout=max(0.0, min(deadline - time.monotonic(), 1.0)))
                    and time.monotonic() >= deadline
                ):
                    break
                if self.on_progress is not None and time.monotonic() - last >= 0.5:
                    last = time.monotonic()
                    self.on_progress(_progress(results, len(prompts), last - t0))
            if failures:
                raise failures[0]
            missing = sum(r is None for r in results)
        if missing:
            raise self._error(
                f"generate: {missing} of {len(prompts)} requests unanswered "
                f"after {self.request_timeout:.0f}s (the server hangs)"
            )
        if self.on_progress is not None:
            self.on_progress(_progress(results, len(prompts), time.monotonic() - t0))
        out = [s for seqs in results for s in seqs]
        self._log(
            f"generate: {len(prompts)} prompts, {len(out)} sequences, "
            f"{sum(len(s.token_ids) for s in out)} tokens"
        )
        return out

    def _complete(
        self, index: int, prompt: list[int], sampling: SamplingSpec, deadline: float
    ) -> list[Sequence]:
        body = request_body(self.served_model, prompt, sampling, index)
        reply = self._json("POST", "/v1/completions", body, deadline - time.monotonic())
        try:
            return parse_completion(reply, index, prompt, sampling)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise self._error(
                f"POST /v1/completions (prompt {index}): the server answered "
                f"garbage ({type(exc).__name__}: {exc}): "
                f"{json.dumps(reply)[:300]}"
            ) from exc

    def _probe_rl_endpoints(self) -> dict[str, Any]:
        """Which RL endpoints the server has, from GET /openapi.json (a read-only request:
        nothing is called to find out); unknown when the schema is not exposed."""
        try:
            schema = self._json("GET", "/openapi.json", None, self.start_timeout, optional=True)
        except EngineError as exc:  # a schema that does not parse: unknown, not fatal
            self._log(f"GET /openapi.json: {exc}")
            schema = None
        out = rl_summary(endpoints_from_schema(schema), "GET /openapi.json")
        self._log(f"rl endpoints: {out['note']}; missing {out['missing']}")
        return out

    def update_weights(
        self, checkpoint: str, mode: str = "keep", clear_cache: bool = False, via: str = "reload"
    ) -> dict[str, Any]:
        """Load the checkpoint directory `checkpoint` into the served engine (HttpUpdater);
        EngineError naming the endpoint the server lacks or that failed."""
        if self.served_model is None:
            raise EngineError(f"engine {self.name} is not running")
        return HttpUpdater(self).update(checkpoint, mode, clear_cache, via)

    def close(self) -> None:
        """Nothing to stop: the server is not parity's (parity serve stops its own)."""


def _pick_model(entries: list[dict], model: str) -> dict | None:
    """The served model: the only one, or the one whose id or root is the trainer's path."""
    if len(entries) == 1:
        return entries[0]
    names = {str(model), str(model).rstrip("/")}
    return next((e for e in entries if e.get("id") in names or e.get("root") in names), None)


def _progress(results: list[Any], total: int, elapsed: float) -> dict[str, Any]:
    """A progress message, as the in-process worker sends them: requests finished, output
    tokens per second so far."""
    finished = [r for r in results if isinstance(r, list)]
    tokens = sum(len(s.token_ids) for seqs in finished for s in seqs)
    return {
        "op": "progress",
        "done": len(finished),
        "total": total,
        "elapsed_s": elapsed,
        "out_tok_s": tokens / elapsed if elapsed > 0 else None,
    }
