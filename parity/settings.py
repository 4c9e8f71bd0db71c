"""Engine settings as users write them: built-in profiles, `[candidate]`/`[baseline]` tables of
scenario files, and setting strings on the command line ("v1-defaults,async_scheduling=false").
Every problem is collected (where, field, message with the fix); nothing here starts anything.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from parity import inputs
from parity.engines.base import EngineSetting

Problem = tuple[str, str, str]
SETTING_FIELDS = {"profile", "engine_args", "env_vars", "env", "sampling"}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    engine: str
    env: str
    engine_args: dict[str, Any]
    env_vars: dict[str, str]


def load_profiles() -> dict[str, Profile]:
    """The built-in profiles (parity/profiles/builtin.toml)."""
    text = resources.files("parity").joinpath("profiles/builtin.toml").read_text()
    data = tomllib.loads(text)
    return {name: Profile(name, d.get("description", ""), d.get("engine", "vllm"),
                          d.get("env", "harness"), dict(d.get("engine_args", {})),
                          {k: str(v) for k, v in d.get("env_vars", {}).items()})
            for name, d in data.items()}


def make_setting(profile_name: str, engine_args: dict | None = None, env_vars: dict | None = None,
                 env: str | None = None, profiles: dict[str, Profile] | None = None,
                 ) -> EngineSetting:
    """A profile plus overrides: engine_args/env_vars are merged over the profile's (a nested
    table such as hf_overrides is merged key by key), env replaces it."""
    profiles = profiles or load_profiles()
    prof = profiles[profile_name]
    args = dict(prof.engine_args)
    for key, value in (engine_args or {}).items():
        if isinstance(value, dict) and isinstance(args.get(key), dict):
            args[key] = {**args[key], **value}
        else:
            args[key] = value
    return EngineSetting.make(prof.engine, env or prof.env, args,
                              {**prof.env_vars, **(env_vars or {})}, profile=profile_name)


def override_problems(profile: Any, args: Any, env_vars: Any, env: Any, where: str, fld: str,
                      profiles: dict[str, Profile]) -> list[Problem]:
    """Problems of a profile name plus engine_args / env_vars / env overrides, all at once."""
    from parity.envs import ENV_PIN

    out = []
    if not isinstance(profile, str) or profile not in profiles:
        out.append((where, f"{fld}profile", f"unknown profile {profile!r}; built-in profiles: "
                                            f"{', '.join(profiles)}"))
    for name, value in (("engine_args", args), ("env_vars", env_vars)):
        if not isinstance(value, dict):
            out.append((where, f"{fld}{name}", f"must be a table, e.g. {name} = {{ key = ... }},"
                                               f" got {type(value).__name__}"))
    if isinstance(args, dict):
        out += [(where, f, m) for f, m in inputs.arg_problems(args, f"{fld}engine_args")]
    if isinstance(env_vars, dict):
        out += [(where, f, m) for f, m in inputs.env_var_problems(env_vars, f"{fld}env_vars")]
    if env is not None:
        message = inputs.env_problem(env, ENV_PIN)
        if message:
            out.append((where, f"{fld}env", message))
    return out


def from_table(data: Any, role: str, where: str, profiles: dict[str, Profile],
               override: str | None = None) -> tuple[EngineSetting | None, list[Problem]]:
    """A scenario's [candidate]/[baseline] table (its profile replaced by `override`, the
    --candidate/--baseline option) as a setting; (None, problems) when it has any."""
    if not isinstance(data, dict):
        return None, [(where, role, "must be a table like [candidate] with profile = \"...\"")]
    problems = [(where, f"{role}.{key}", "unknown field; allowed: "
                 + ", ".join(sorted(SETTING_FIELDS))) for key in data if key not in SETTING_FIELDS]
    profile = data.get("profile", "v1-defaults")
    if override is not None:
        if override not in profiles:
            problems.append((f"--{role}", "profile", f"unknown profile {override!r}; built-in "
                                                     f"profiles: {', '.join(profiles)}"))
        profile = override if override in profiles else profile
    args, env_vars, env = data.get("engine_args", {}), data.get("env_vars", {}), data.get("env")
    problems += override_problems(profile, args, env_vars, env, where, f"{role}.", profiles)
    if problems:
        return None, problems
    return make_setting(profile, args, env_vars, env, profiles), []


def parse_setting(text: Any, where: str) -> tuple[EngineSetting | None, list[Problem]]:
    """A setting string "PROFILE[,key=value,...]": engine args by name (nested with dots, e.g.
    hf_overrides.head_dtype=float32), env vars as env.NAME=value, the environment as
    envname=v0. Values are TOML literals (true, 3, 0.5, "x") or bare strings. `where` names the
    option in problems (e.g. "--good")."""
    profiles = load_profiles()
    parts = [p.strip() for p in str(text or "").split(",")]
    if not parts[0]:
        return None, [(where, "profile", "empty setting: start with a profile name, e.g. "
                                         "v1-defaults or v1-defaults,async_scheduling=false")]
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
            problems.append((where, key, "no value; write key=value (key=\"\" for an empty "
                                         "string)"))
        elif key.startswith("env."):
            _put(env_vars, [key[4:]], _literal(raw), where, key, problems)
        elif key == "envname":
            env = _literal(raw)
        else:
            _put(args, key.split("."), _literal(raw), where, key, problems)
    problems += override_problems(profile, args, env_vars, env, where, "", profiles)
    if problems:
        return None, problems
    return make_setting(profile, args, env_vars, env, profiles), []


def _literal(raw: str) -> Any:
    """A TOML literal when the text is one (true, 3, 0.5, "x", [1, 2]), else the bare text."""
    raw = raw.strip()
    try:
        return tomllib.loads(f"v = {raw}")["v"] if "\n" not in raw else raw
    except (tomllib.TOMLDecodeError, RecursionError):
        return raw


def _put(target: dict, path: list[str], value: Any, where: str, key: str,
         problems: list[Problem]) -> None:
    """target[a][b]... = value, with a problem (not an exception) when the path is empty in a
    part, given twice, or runs through a value that is not a table."""
    if any(not p for p in path):
        problems.append((where, key, "empty name part; write name or name.sub=value"))
        return
    for part in path[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            problems.append((where, key, f"{part!r} is given a value and is also used as a "
                                         "table; give one of them"))
            return
    if path[-1] in target:
        problems.append((where, key, "given twice (or as a value and a table); give it once"))
        return
    target[path[-1]] = value
