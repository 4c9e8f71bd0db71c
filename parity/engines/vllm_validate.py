"""Engine arguments judged by the vLLM of the worker's interpreter, without starting an engine:
names against EngineArgs' fields, value types against their annotations, values by building the
engine config. Runs inside parity's engine worker (standard library and vLLM only: the V0
environment has no parity package)."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing

if __package__:  # imported as parity.engines.vllm_validate (tests)
    from parity.engines import vllm_transfer
else:  # inside the engine worker script: beside it on sys.path
    import vllm_transfer


def validate_engine_args(arg_sets: list[dict]) -> dict:
    """Check engine arguments against this vLLM without starting an engine: names against
    EngineArgs' fields, value types against their annotations, and values by building the engine
    config (EngineArgs(...).create_engine_config(), vLLM's own validation; reads the checkpoint's
    config, allocates nothing). Each arg set is {"engine_args", "model", "env_vars"} (or a bare
    dict of engine args: names only). A failing config is blamed on the arguments whose removal
    makes it build; when none does, on the set as a whole."""

    import vllm  # lazy: vLLM, only in an engine's interpreter
    from vllm.engine.arg_utils import EngineArgs  # lazy: vLLM, only in an engine's interpreter

    fields = {f.name: f.type for f in dataclasses.fields(EngineArgs)}
    problems, limits = [], {}  # limits: index -> what requests may ask of that engine
    for i, item in enumerate(arg_sets):
        args = item.get("engine_args", item) if "model" in item else item
        found = []
        for name, value in args.items():
            if name not in fields:
                close = difflib.get_close_matches(name, sorted(fields), n=3)
                found.append({"index": i, "name": name, "suggestions": close, "kind": "name"})
            else:
                expected = _type_mismatch(fields[name], value)
                if expected:
                    found.append(
                        {
                            "index": i,
                            "name": name,
                            "kind": "value",
                            "message": f"expected {expected}, got {value!r}",
                        }
                    )
        if not found and "model" in item:
            refused, config = _config_problems(
                EngineArgs, item["model"], args, item.get("env_vars") or {}
            )
            found = [
                {"index": i, "name": name, "kind": kind, "message": message}
                for name, message, kind in refused
            ] + _transfer_refusal(i, args, config)
            model_cfg = getattr(config, "model_config", None)
            limits[i] = {
                "max_model_len": getattr(model_cfg, "max_model_len", None),
                "max_logprobs": getattr(model_cfg, "max_logprobs", None),
            }
        problems += found
    return {
        "problems": problems,
        "vllm_version": vllm.__version__,
        "fields": sorted(fields),
        "limits": limits,
    }


def _transfer_refusal(index: int, args: dict, config) -> list[dict]:
    """A weight-transfer backend (engine arg weight_transfer_config) this machine cannot run:
    [{"kind": "refused", "name": "weight_transfer_config", "message": vLLM's reason}]
    (vllm_transfer.refusal); the engine is then not started."""
    wtc = getattr(config, "weight_transfer_config", None)
    if config is None or wtc is None or "weight_transfer_config" not in args:
        return []
    reason = vllm_transfer.refusal(wtc.backend, config)
    if reason is None:
        return []
    message = f"weight transfer backend {wtc.backend!r}: {reason}"
    return [
        {"index": index, "name": "weight_transfer_config", "kind": "refused", "message": message}
    ]


# Arguments vLLM's LLM() converts before EngineArgs sees them (dict -> config object): their
# values are left to the engine start.
_LLM_CONVERTED = {
    "compilation_config",
    "structured_outputs_config",
    "profiler_config",
    "attention_config",
    "kv_transfer_config",
    "worker_cls",
}


def _type_mismatch(annotation, value):
    """The expected type (text) when `value` cannot be of the simple annotation (bool, int,
    float, str, None, Literal, dict, list and unions of them); None when it fits or the
    annotation is anything richer (left to vLLM's own checks)."""

    if isinstance(annotation, str):
        return None
    members = [annotation]
    flat = []
    while members:
        t = members.pop()
        if typing.get_origin(t) in (typing.Union, types.UnionType):
            members += typing.get_args(t)
        else:
            flat.append(t)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        type(None): lambda v: v is None,
    }
    names = []
    for t in flat:
        origin = typing.get_origin(t)
        if t in ok:
            if ok[t](value):
                return None
            if t is not type(None):
                names.append(t.__name__)
        elif origin is typing.Literal:
            if any(value == c and type(value) is type(c) for c in typing.get_args(t)):
                return None
            names.append("one of " + ", ".join(repr(c) for c in typing.get_args(t)))
        elif origin in (dict, list, set) or t in (dict, list, set):
            if isinstance(value, {dict: dict, list: list, set: list}[origin or t]):
                return None
            names.append("a table" if (origin or t) is dict else "a list")
        else:
            return None  # a class or callable: vLLM's own checks decide
    return " or ".join(names) if names else None


def _config_problems(engine_args_cls, model: str, args: dict, env_vars: dict):
    """([(name or None, message, kind)], engine config or None): why the engine config cannot
    be built from `args`, or the config it builds. kind "value": an engine argument's value is
    refused (name: the argument, or None for the set as a whole); kind "env": this vLLM on this
    machine refuses a mode the setting selects by environment variable (name: the variable),
    e.g. VLLM_USE_V2_MODEL_RUNNER=1 on a build without Triton; kind "env_value": the
    variable's value cannot be read (e.g. VLLM_USE_V2_MODEL_RUNNER=yes)."""
    checked = {k: v for k, v in args.items() if k not in _LLM_CONVERTED}
    config, error = _build_config(engine_args_cls, model, checked, env_vars)
    if error is None:
        return [], config
    culprits = [
        k
        for k in checked
        if _build_config(
            engine_args_cls, model, {n: v for n, v in checked.items() if n != k}, env_vars
        )[1]
        is None
    ]
    if culprits:
        return [(k, error, "value") for k in culprits], None
    modes = [
        k
        for k in env_vars
        if _build_config(
            engine_args_cls, model, checked, {n: v for n, v in env_vars.items() if n != k}
        )[1]
        is None
    ]
    out = []
    for k in modes:  # a value vLLM cannot read (int("yes")) is a mistake in the setting
        unreadable = _unreadable_env(k, env_vars[k])
        out.append((k, unreadable, "env_value") if unreadable else (k, error, "env"))
    return out or [(None, error, "value")], None


def _unreadable_env(name: str, value) -> str | None:
    """vLLM's own parse of one of its environment variables (vllm.envs' getter) failing on
    `value`: the error text; None when it reads it, or when vLLM does not know the variable."""
    try:
        import vllm.envs as vllm_envs  # lazy: vLLM, only in an engine's interpreter

        getter = getattr(vllm_envs, "environment_variables", {}).get(name)
    except Exception:
        return None
    if getter is None:
        return None
    saved = os.environ.get(name)
    os.environ[name] = str(value)
    try:
        getter()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _build_config(engine_args_cls, model: str, args: dict, env_vars: dict):
    """(config, None) from EngineArgs(model, **args).create_engine_config(), or (None, vLLM's
    message); the setting's environment variables are in place while it runs."""
    saved = {k: os.environ.get(k) for k in env_vars}
    os.environ.update({k: str(v) for k, v in env_vars.items()})
    try:
        return engine_args_cls(model=model, **args).create_engine_config(), None
    except Exception as exc:
        lines = [
            ln for ln in str(exc).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln
        ]
        return None, f"{type(exc).__name__}: " + " ".join(ln.strip() for ln in lines)[:400]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
