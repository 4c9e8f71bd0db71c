"""Engine settings as users write them: built-in profiles, `[candidate]`/`[baseline]` tables of
scenario files, and setting strings on the command line ("v1-defaults,async_scheduling=false").
Every problem is collected (where, field, message with the fix); nothing here starts anything.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any
from urllib.parse import urlsplit

from parity import engines
from parity.engines.base import EngineSetting
from parity.engines.profiles import Profile, load_profiles
from parity.setup import inputs
from parity.setup.envspecs import ENV_PIN

Problem = tuple[str, str, str]
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


def make_setting(
    profile_name: str,
    engine_args: dict | None = None,
    env_vars: dict | None = None,
    env: str | None = None,
    profiles: dict[str, Profile] | None = None,
) -> EngineSetting:
    """A profile plus overrides: engine_args/env_vars are merged over the profile's (a nested
    table such as hf_overrides is merged key by key), env replaces it."""
    profiles = profiles or load_profiles()
    prof = profiles[profile_name]
    args = merged(prof.engine_args, engine_args or {})
    return EngineSetting.make(
        prof.engine,
        env or prof.env,
        args,
        {**prof.env_vars, **(env_vars or {})},
        profile=profile_name,
    )


def merged(base: dict, over: dict) -> dict:
    """Engine args `over` on top of `base`, a nested table (hf_overrides) merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def override_problems(
    profile: Any,
    args: Any,
    env_vars: Any,
    env: Any,
    where: str,
    fld: str,
    profiles: dict[str, Profile],
) -> list[Problem]:
    """Problems of a profile name plus engine_args / env_vars / env overrides, all at once."""

    out = []
    if not isinstance(profile, str) or profile not in profiles:
        out.append(
            (
                where,
                f"{fld}profile",
                f"unknown profile {profile!r}; built-in profiles: {', '.join(profiles)}",
            )
        )
    return out + table_problems(args, env_vars, env, where, fld)


def table_problems(args: Any, env_vars: Any, env: Any, where: str, fld: str) -> list[Problem]:
    """Problems of a setting's engine_args / env_vars tables and env name, all at once."""

    out = []
    for name, value in (("engine_args", args), ("env_vars", env_vars)):
        if not isinstance(value, dict):
            out.append(
                (
                    where,
                    f"{fld}{name}",
                    f"must be a table, e.g. {name} = {{ key = ... }}, got {type(value).__name__}",
                )
            )
    if isinstance(args, dict):
        out += [(where, f, m) for f, m in inputs.arg_problems(args, f"{fld}engine_args")]
    if isinstance(env_vars, dict):
        out += [(where, f, m) for f, m in inputs.env_var_problems(env_vars, f"{fld}env_vars")]
    if env is not None:
        message = inputs.env_problem(env, ENV_PIN)
        if message:
            out.append((where, f"{fld}env", message))
    return out


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


def inprocess_problems(setting: EngineSetting, where: str, fld: str) -> list[Problem]:
    """What an engine parity starts in process cannot take (a served engine can): vLLM's LLM
    refuses data parallelism in one process (it may hang), so replicas are a server's job."""
    size = setting.args.get("data_parallel_size", 1)
    if setting.engine == "vllm" and isinstance(size, int) and size > 1:
        return [
            (
                where,
                f"{fld}.data_parallel_size",
                f"{size}: vLLM's LLM refuses data "
                "parallelism in one process; serve the replicas (parity serve "
                "PROFILE,data_parallel_size=N, or your own vllm serve) and point the scenario "
                "at the URL; tensor/pipeline parallel sizes work in process",
            )
        ]
    return []


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


def parse_setting(text: Any, where: str) -> tuple[EngineSetting | None, list[Problem]]:
    """A setting string "PROFILE[,key=value,...]": engine args by name (nested with dots, e.g.
    hf_overrides.head_dtype=float32), env vars as env.NAME=value, the environment as
    envname=v0. Values are TOML literals (true, 3, 0.5, "x") or bare strings. `where` names the
    option in problems (e.g. "--good")."""
    profiles = load_profiles()
    profile, args, env_vars, env, problems = split_setting(text, where)
    if problems:
        return None, problems
    problems += override_problems(profile, args, env_vars, env, where, "", profiles)
    if problems:
        return None, problems
    return make_setting(profile, args, env_vars, env, profiles), []


def split_setting(text: Any, where: str) -> tuple[str, dict, dict, str | None, list[Problem]]:
    """(profile, engine args, env vars, env name, problems) of a setting string, unchecked
    against the profiles (parse_setting and from_table check the merged result)."""
    parts = [p.strip() for p in str(text or "").split(",")]
    if not parts[0]:
        return (
            "",
            {},
            {},
            None,
            [
                (
                    where,
                    "profile",
                    "empty setting: start with a profile name, "
                    "e.g. v1-defaults or v1-defaults,async_scheduling=false",
                )
            ],
        )
    profile, pairs = parts[0], parts[1:]
    problems: list[Problem] = []
    args: dict[str, Any] = {}
    env_vars: dict[str, Any] = {}
    env = None
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not pair:
            problems.append((where, "(setting)", "empty item between commas; remove it"))
        elif not sep or not key:
            problems.append((where, pair, "expected key=value, e.g. async_scheduling=false"))
        elif not raw.strip():
            problems.append((where, key, 'no value; write key=value (key="" for an empty string)'))
        elif key.startswith("env."):
            _put(env_vars, [key[4:]], _literal(raw), where, key, problems)
        elif key == "envname":
            env = _literal(raw)
        else:
            _put(args, key.split("."), _literal(raw), where, key, problems)
    return profile, args, env_vars, env, problems


def _literal(raw: str) -> Any:
    """A TOML literal when the text is one (true, 3, 0.5, "x", [1, 2]), else the bare text."""
    raw = raw.strip()
    try:
        return tomllib.loads(f"v = {raw}")["v"] if "\n" not in raw else raw
    except (tomllib.TOMLDecodeError, RecursionError):
        return raw


def _put(
    target: dict, path: list[str], value: Any, where: str, key: str, problems: list[Problem]
) -> None:
    """target[a][b]... = value, with a problem (not an exception) when the path is empty in a
    part, given twice, or runs through a value that is not a table."""
    if any(not p for p in path):
        problems.append((where, key, "empty name part; write name or name.sub=value"))
        return
    for part in path[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            problems.append(
                (
                    where,
                    key,
                    f"{part!r} is given a value and is also used as a table; give one of them",
                )
            )
            return
    if path[-1] in target:
        problems.append((where, key, "given twice (or as a value and a table); give it once"))
        return
    target[path[-1]] = value
