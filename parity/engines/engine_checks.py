"""What the harness asks an engine environment's interpreter without starting an engine: the
engine-arg names checked by a validator worker (warmed ahead of the run), and a checkpoint's
model-identity facts read by that environment's transformers (by the same validator when one is
warm: one vLLM process per environment before the engines start)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from parity.engines import check_cache
from parity.engines.base import EngineError
from parity.engines.process import WORKER_SCRIPT, WorkerProcess, cache_vars, env_preloads, tail


class _Warm:
    """A validator started ahead of the run: it answers every check of its interpreter (engine
    args, model facts) one at a time, from whichever thread asks, until close_warm()."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker, self.lock, self.ready = worker, threading.Lock(), False

    def request(self, payload: dict, timeout: float) -> dict[str, Any]:
        with self.lock:
            if not self.ready:
                self.worker.ready(timeout=timeout)
                self.ready = True
            return self.worker.request(payload, timeout=timeout)


_WARM: dict[str, _Warm] = {}  # interpreter -> its validator, importing vLLM already


def warm_validator(python: str, log_path: Path) -> None:
    """Start the validator of `python` now: it imports vLLM while the harness prepares the
    run; validate_engine_args and read_model_facts for `python` use it until close_warm()."""
    if python not in _WARM:
        worker = _validator(python, log_path)
        worker.preload()
        _WARM[python] = _Warm(worker)


def close_warm(pythons: set[str] | None = None) -> None:
    """Stop the warm validators (those of `pythons` only, when given)."""
    for python in [p for p in _WARM if pythons is None or p in pythons]:
        _WARM.pop(python).worker.close()


def _validator(python: str, log_path: Path) -> WorkerProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(env_preloads(python))
    env.update({k: v for k, v in cache_vars().items() if k not in env})
    return WorkerProcess("validator", python, env, log_path)


def _ask_warm(python: str, payload: dict, timeout: float) -> dict[str, Any] | None:
    """The warm validator's reply, or None when `python` has none; one that fails is dropped
    (it is gone: the caller's fallback starts afresh) and its error raised."""
    warm = _WARM.get(python)
    if warm is None:
        return None
    try:
        return warm.request(payload, timeout)
    except EngineError:
        _WARM.pop(python, None)
        raise


def validate_engine_args(
    python: str, arg_sets: list[dict], log_path: Path, timeout: float = 180.0
) -> dict[str, Any]:
    """Check engine-arg names against the EngineArgs of the vLLM in `python`, starting no engine;
    an arg set with a model that this environment judged before is answered from check_cache.

    Returns {"problems": [{"index", "name", ...}], "vllm_version": str, "limits": {index:
    {"max_model_len", "max_logprobs"}}, "cached": how many sets were answered from the cache}.
    """
    kept = [_kept(python, a) for a in arg_sets]
    todo = [i for i, k in enumerate(kept) if k is None]
    if todo:
        reply = _validate(python, [arg_sets[i] for i in todo], log_path, timeout)
        for j, i in enumerate(todo):
            kept[i] = {
                "problems": [
                    {k: v for k, v in p.items() if k != "index"}
                    for p in reply.get("problems") or []
                    if p["index"] == j
                ],
                "vllm_version": reply.get("vllm_version"),
                "limits": (reply.get("limits") or {}).get(str(j)),
            }
            if "model" in arg_sets[i]:
                check_cache.put("validate", python, arg_sets[i]["model"], arg_sets[i], kept[i])
    return {
        "problems": [dict(p, index=i) for i, k in enumerate(kept) for p in k["problems"]],
        "vllm_version": next((k["vllm_version"] for k in kept), None),
        "limits": {str(i): k["limits"] for i, k in enumerate(kept) if k["limits"] is not None},
        "cached": len(arg_sets) - len(todo),
    }


def _kept(python: str, arg_set: dict) -> dict[str, Any] | None:
    """A verdict on an arg set (with its model) kept from an earlier run, or None."""
    if "model" not in arg_set:
        return None
    found = check_cache.get("validate", python, arg_set["model"], arg_set)
    return found if found and {"problems", "vllm_version", "limits"} <= set(found) else None


def needs_validator(python: str, arg_sets: list[dict], facts_of: list[str]) -> bool:
    """Whether a check of `python`'s environment (these arg sets, these checkpoints' facts) is
    not answered by check_cache: its validator has work."""
    return any(_kept(python, a) is None for a in arg_sets) or any(
        check_cache.get("facts", python, m, "facts") is None for m in facts_of
    )


def _validate(python: str, arg_sets: list[dict], log_path: Path, timeout: float) -> dict:
    """The validator's reply for these arg sets: the warm one's, else a one-shot's."""
    payload = {"op": "validate", "arg_sets": arg_sets}
    reply = _ask_warm(python, payload, timeout)
    if reply is not None:
        return reply
    worker = _validator(python, log_path)
    try:
        worker.ready(timeout=timeout)
        return worker.request(payload, timeout=timeout)
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
    them, starting no engine (parity.engines.identity.read_facts run there): by its warm
    validator when there is one, else in a one-shot interpreter (a few seconds).

    Returns:
        parity.engines.identity.MODEL_KEYS -> value, plus transformers_version, errors, config_json.
    Raises:
        EngineError: the interpreter cannot run, times out, or returns no facts (with the log).
    """
    kept = check_cache.get("facts", python, str(model_path), "facts")
    if kept is not None:
        return kept
    facts = _read_facts(python, model_path, log_path, timeout)
    check_cache.put("facts", python, str(model_path), "facts", facts)
    return facts


def _read_facts(python: str, model_path: str | Path, log_path: Path, timeout: float) -> dict:
    """read_model_facts without the cache: by the warm validator, else a one-shot interpreter."""
    try:
        reply = _ask_warm(python, {"op": "facts", "model": str(model_path)}, timeout)
    except EngineError:
        reply = None  # the validator is gone: read them the one-shot way
    if reply is not None:
        return reply["facts"]
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
