"""Engine-side checks before any engine starts: every engine argument's name and value, in the
environment whose vLLM will run it (one validator process per interpreter, no engine started).

A problem is (where, field, message with the fix): `where` is the scenario file, or the option
(`--candidate`, `--good`, ...) the setting came from.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from parity.engines.base import EngineSetting

Problem = tuple[str, str, str]


@dataclass(frozen=True)
class Check:
    """One engine setting to validate: where it was written and under which field."""

    where: str
    field: str  # e.g. "candidate.engine_args"
    setting: EngineSetting
    model_path: str


# (python, arg set as JSON) -> (problems of that set, vLLM version): one check per process.
_SEEN: dict[tuple[str, str], tuple[list[dict], str]] = {}


def engine_problems(checks: list[Check], pythons: dict[str, str], log_dir: Path,
                    ) -> list[Problem]:
    """Every unknown engine-arg name and every value vLLM's config classes refuse, for all
    checks at once (sorted, each reported once per place and field).

    Args:
        checks: the settings to validate.
        pythons: environment name -> interpreter (every env of `checks`).
        log_dir: where the validator processes log.
    Raises:
        EngineError: a validator process could not run (the environment is broken).
    """
    from parity.engines.process import validate_engine_args

    todo: dict[str, dict[str, dict]] = {}
    for c in checks:
        python = pythons[c.setting.env]
        item = {"model": c.model_path, "engine_args": c.setting.args,
                "env_vars": c.setting.variables}
        key = json.dumps(item, sort_keys=True)
        if (python, key) not in _SEEN:
            todo.setdefault(python, {})[key] = item
    for python, items in todo.items():
        env = next(c.setting.env for c in checks if pythons[c.setting.env] == python)
        keys = list(items)
        reply = validate_engine_args(python, [items[k] for k in keys],
                                     log_dir / f"validate-{env}.log")
        for i, key in enumerate(keys):
            _SEEN[(python, key)] = ([p for p in reply["problems"] if p["index"] == i],
                                    reply["vllm_version"])
    problems = set()
    for c in checks:
        python = pythons[c.setting.env]
        item = {"model": c.model_path, "engine_args": c.setting.args,
                "env_vars": c.setting.variables}
        found, version = _SEEN[(python, json.dumps(item, sort_keys=True))]
        for p in found:
            problems.add(_problem(c, p, version))
    return sorted(problems)


def _problem(c: Check, p: dict, version: str) -> Problem:
    where = f"vLLM {version} ({c.setting.env})"
    if p.get("kind", "name") == "name":
        close = p.get("suggestions") or []
        hint = (f"did you mean {', '.join(close)}?" if close
                else "see vLLM's EngineArgs for the accepted names")
        return (c.where, f"{c.field}.{p['name']}", f"not an engine argument of {where}; {hint}")
    fld = f"{c.field}.{p['name']}" if p.get("name") else c.field
    return (c.where, fld, f"{where} refuses this value: {p['message']}; fix the value "
                          "(or remove it to use the engine's default)")


def suggest(name: str, choices) -> str:
    """' (did you mean X?)' for a close match, else ''."""
    close = difflib.get_close_matches(name, sorted(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
