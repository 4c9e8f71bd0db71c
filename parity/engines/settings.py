"""Engine settings from a built-in profile plus overrides (engine_args, env_vars, env), and
setting strings on the command line ("v1-defaults,async_scheduling=false"); every problem is
collected (where, field, message with the fix); nothing here starts anything."""

from __future__ import annotations

import tomllib
from typing import Any

from parity.engines.base import EngineSetting
from parity.engines.profiles import Profile, load_profiles
from parity.setup import inputs
from parity.setup.envspecs import ENV_PIN

Problem = tuple[str, str, str]


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
