"""A scenario file's `[candidate]`/`[baseline]` table as an engine setting: a vLLM profile with
overrides (and the --candidate/--baseline string over it), a served engine (url, api_key_env,
server_log) or an engine kind from a plugin; every problem collected, nothing started."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from parity import engines
from parity.engines.base import EngineSetting
from parity.engines.profiles import Profile
from parity.engines.settings import (
    Problem,
    inprocess_problems,
    make_setting,
    merged,
    override_problems,
    split_setting,
    table_problems,
)
from parity.setup import inputs

SETTING_FIELDS = {
    "profile",
    "engine_args",
    "env_vars",
    "env",
    "sampling",
    "engine",
    "url",
    "api_key_env",
    "server_log",
}
# A served engine ([candidate] engine = "openai") runs with its server's configuration: only
# these fields describe it; the in-process ones are refused.
SERVED_FIELDS = {"engine", "url", "api_key_env", "server_log", "sampling"}
ENGINE_KINDS = ("vllm", "openai")
# An engine kind another package registers (parity.engines.kinds()) takes these; no profile.
PLUGIN_FIELDS = {"engine", "engine_args", "env_vars", "env", "sampling"}


def from_table(
    data: Any, role: str, where: str, profiles: dict[str, Profile], override: str | None = None
) -> tuple[EngineSetting | None, list[Problem]]:
    """A scenario's [candidate]/[baseline] table (its profile replaced by `override`, the
    --candidate/--baseline option) as a setting; (None, problems) when it has any."""
    if not isinstance(data, dict):
        return None, [(where, role, 'must be a table like [candidate] with profile = "..."')]
    if override is not None and is_url(override):
        return served_setting({"engine": "openai", "url": override}, f"--{role}", role)
    if override is None and (data.get("engine") == "openai" or "url" in data):
        return served_setting(data, where, role)
    kind = data.get("engine", "vllm")
    if override is None and isinstance(kind, str) and kind not in ENGINE_KINDS:
        if kind in engines.kinds():
            return plugin_setting(data, where, role)
    problems = [
        (where, f"{role}.{key}", "unknown field; allowed: " + ", ".join(sorted(SETTING_FIELDS)))
        for key in data
        if key not in SETTING_FIELDS
    ]
    if override is None and data.get("engine", "vllm") != "vllm":
        problems.append(
            (
                where,
                f"{role}.engine",
                f"{data['engine']!r}: use one of " + ", ".join(f'"{k}"' for k in engines.kinds()),
            )
        )
    profile = data.get("profile", "v1-defaults")
    args, env_vars, env = data.get("engine_args", {}), data.get("env_vars", {}), data.get("env")
    if override is not None:  # "PROFILE[,key=value,...]" replaces the profile, merges the rest
        name, o_args, o_vars, o_env, found = split_setting(override, f"--{role}")
        problems += found
        if name and name not in profiles:
            problems.append(
                (
                    f"--{role}",
                    "profile",
                    f"unknown profile {name!r}; built-in profiles: {', '.join(profiles)}",
                )
            )
        profile = name if name in profiles else profile
        if isinstance(args, dict) and isinstance(env_vars, dict):
            args, env_vars = merged(args, o_args), {**env_vars, **o_vars}
        env = o_env if o_env is not None else env
    problems += override_problems(profile, args, env_vars, env, where, f"{role}.", profiles)
    if problems:
        return None, problems
    setting = make_setting(profile, args, env_vars, env, profiles)
    problems = inprocess_problems(setting, where, f"{role}.engine_args")
    return (None, problems) if problems else (setting, [])


def plugin_setting(data: dict, where: str, role: str) -> tuple[EngineSetting | None, list[Problem]]:
    """The table of an engine kind another package registers ([candidate] engine = "KIND",
    parity.engines.kinds()) as a setting: engine_args, env_vars, env and sampling as for vLLM,
    without a profile (profiles are vLLM's); (None, problems) when it has any."""
    kind = data["engine"]
    problems = [
        (
            where,
            f"{role}.{key}",
            f'not a field of engine = "{kind}" (an engine kind from a plugin: no profile, no '
            "url); remove it; allowed: " + ", ".join(sorted(PLUGIN_FIELDS)),
        )
        for key in data
        if key not in PLUGIN_FIELDS
    ]
    args, env_vars, env = data.get("engine_args", {}), data.get("env_vars", {}), data.get("env")
    problems += table_problems(args, env_vars, env, where, f"{role}.")
    if problems:
        return None, problems
    return EngineSetting.make(kind, env or "harness", args, env_vars), []


def is_url(text: Any) -> bool:
    """Whether an option's value names a served engine (http:// or https://) not a profile."""
    return isinstance(text, str) and text.lower().startswith(("http://", "https://"))


def url_problem(url: Any) -> str | None:
    """Why a served engine's base URL is unusable (None when it is fine)."""

    if not isinstance(url, str) or not url.strip():
        return 'must be the server\'s base URL, e.g. "http://127.0.0.1:8000"'
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f'{url!r} is not a URL ({exc}); e.g. "http://127.0.0.1:8000"'
    if parts.scheme not in ("http", "https"):
        return f'{url!r}: the scheme must be http or https, e.g. "http://127.0.0.1:8000"'
    if not parts.hostname:
        return f'{url!r} names no host; e.g. "http://127.0.0.1:8000"'
    if parts.query or parts.fragment or parts.username or parts.password:
        return (
            f"{url!r}: give the base URL only (no query, fragment or credentials: the API "
            "key comes from api_key_env)"
        )
    if port == 0:
        return f"{url!r}: port 0 is not a server's port"
    return None


def served_setting(
    data: dict,
    where: str,
    role: str,
) -> tuple[EngineSetting | None, list[Problem]]:
    """A served engine's table ([candidate] engine = "openai", url = ..., api_key_env = ...,
    server_log = ...) as a setting; (None, problems) when it has any. The API key is read from
    the named environment variable when the engine starts, never from the file; the variable
    must be set now."""

    problems: list[Problem] = []
    for key in data:
        if key not in SETTING_FIELDS:
            problems.append(
                (
                    where,
                    f"{role}.{key}",
                    "unknown field; allowed for a served "
                    "engine: " + ", ".join(sorted(SERVED_FIELDS)),
                )
            )
        elif key not in SERVED_FIELDS:
            problems.append(
                (
                    where,
                    f"{role}.{key}",
                    'a served engine (engine = "openai") '
                    "runs with its server's own configuration: set it when starting "
                    "the server (parity serve PROFILE,key=value) and remove it here",
                )
            )
    if data.get("engine", "openai") != "openai":
        problems.append(
            (
                where,
                f"{role}.engine",
                'a url is given: the engine kind must be "openai" (a served endpoint)',
            )
        )
    elif "url" not in data:
        problems.append(
            (
                where,
                f"{role}.url",
                'engine = "openai" needs the server\'s base '
                'URL, e.g. url = "http://127.0.0.1:8000"',
            )
        )
    else:
        message = url_problem(data["url"])
        if message:
            problems.append((where, f"{role}.url", message))
    key_env = data.get("api_key_env")
    if key_env is not None:
        if not isinstance(key_env, str) or not inputs.ENV_VAR_NAME.fullmatch(key_env):
            problems.append(
                (
                    where,
                    f"{role}.api_key_env",
                    f'{key_env!r}: the NAME of an environment variable, e.g. "VLLM_API_KEY"',
                )
            )
        elif not os.environ.get(key_env):
            problems.append(
                (
                    where,
                    f"{role}.api_key_env",
                    f"${key_env} is not set (or empty): export the server's API key in it",
                )
            )
    log = data.get("server_log")
    if log is not None and not isinstance(log, str):
        problems.append(
            (where, f"{role}.server_log", "must be the path of the server's log file (a string)")
        )
    if problems:
        return None, problems
    return EngineSetting.make(
        "openai", url=data["url"].rstrip("/"), api_key_env=key_env, server_log=log, profile=None
    ), []
