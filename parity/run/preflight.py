"""Engine-side checks before any engine starts: every engine argument's name and value, in the
environment whose vLLM will run it (one validator process per interpreter, no engine started),
or by the engine class of a plugin's engine kind.

A problem is (where, field, message with the fix): `where` is the scenario file, or the option
(`--candidate`, `--good`, ...) the setting came from.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from parity import engines
from parity.categories.base import sampling_for
from parity.engines import engine_checks
from parity.engines.base import EngineSetting
from parity.engines.engine_checks import validate_engine_args
from parity.run import modelcheck
from parity.run.prompts import render
from parity.run.scenario import ScenarioError
from parity.setup import envs

Problem = tuple[str, str, str]
Log = Callable[[str], None]


@dataclass(frozen=True)
class Check:
    """One engine setting to validate: where it was written and under which field."""

    where: str
    field: str  # e.g. "candidate.engine_args"
    setting: EngineSetting
    model_path: str


# (python, arg set as JSON) -> (problems of that set, vLLM version, the engine's request
# limits {max_model_len, max_logprobs}): one check per process.
_SEEN: dict[tuple[str, str], tuple[list[dict], str, dict]] = {}


def _key(c: Check) -> str:
    return json.dumps(
        {"model": c.model_path, "engine_args": c.setting.args, "env_vars": c.setting.variables},
        sort_keys=True,
    )


def checks_for(results) -> list[tuple[Any, str, Check]]:
    """(result, role, Check) for every engine role of a run's scenarios, each with where its
    setting was written (the file, or --candidate/--baseline when the option set it)."""
    out = []
    for res in results:
        sc = res.scenario
        for role, setting in sc.settings().items():
            if setting.engine == "openai":  # a served engine: its server validated its config
                continue
            if setting.engine not in engines.ENGINES:  # a plugin's kind: plugin_problems
                continue
            where = f"--{role}" if sc.provenance.get(role) == "cli" else str(sc.path)
            out.append((res, role, Check(where, f"{role}.engine_args", setting, res.model_path)))
    return out


def plugin_problems(results, log: Log) -> list[Problem]:
    """The settings of engine kinds from plugins (parity.engines.kinds()), which vLLM's validator
    does not know: judged by the engine class's own `setting_problems(setting)` where it has one
    (parity.engines.base.Engine), else left to the engine's start (said once per kind).

    Raises:
        PluginError: a plugin's engine class fails to load.
    """
    out: list[Problem] = []
    unchecked = set()
    for res in results:
        sc = res.scenario
        for role, setting in sc.settings().items():
            if setting.engine in engines.ENGINES:
                continue
            judge = getattr(engines.engine_class(setting.engine), "setting_problems", None)
            if judge is None:
                unchecked.add(setting.engine)
                continue
            where = f"--{role}" if sc.provenance.get(role) == "cli" else str(sc.path)
            out += [(where, f"{role}.{fld}", message) for fld, message in judge(setting)]
    for kind in sorted(unchecked):
        log(
            f"[validate] engine kind {kind!r} (a plugin) defines no setting_problems: its "
            "engine_args are first read when it starts"
        )
    return out


def release_validators(results, log: Log) -> None:
    """Stop the warm validators whose environment has nothing left to answer (every arg set and
    checkpoint fact kept from an earlier run, parity.engines.check_cache): no vLLM import then
    competes with preparing the run. Needs each result's model_path."""
    sets: dict[str, list[dict]] = {}
    for *_, c in checks_for(results):
        sets.setdefault(envs.python_for(c.setting.env, log), []).append(json.loads(_key(c)))
    facts: dict[str, list[str]] = {}
    for env, model_path in modelcheck.facts_wanted(results):
        facts.setdefault(envs.python_for(env, log), []).append(model_path)
    engine_checks.close_warm(
        {
            python
            for python in set(sets) | set(facts)
            if not engine_checks.needs_validator(
                python, sets.get(python, []), facts.get(python, [])
            )
        }
    )


def preflight(
    results,
    tokenizers: dict[str, Any],
    log_dir: Path,
    log: Log,
) -> tuple[dict[str, str], dict, dict[tuple[str, str], str]]:
    """Everything checked in the engines' environments before any engine starts: the
    environments are built, every engine argument judged by its vLLM (a plugin engine kind's
    by its own class, plugin_problems), every request checked
    against the limits the engine's config sets, and each checkpoint read as each environment
    reads it (config drift).

    A setting whose vLLM refuses a mode its environment variables select on this machine
    (VLLM_USE_V2_MODEL_RUNNER=1 without Triton: see `refusal`) is not a mistake in the file: its
    engine is not started and the scenarios that need it are unresolved, with vLLM's reason.

    Args:
        results: the run's ScenarioResults (scenario, model_path, prompts).
        tokenizers: model path -> tokenizer (prompt lengths).
    Returns:
        (environment name -> interpreter, config drifts for parity.run.modelcheck,
        (setting key, model path) -> why that engine cannot run here).
    Raises:
        ScenarioError: every problem found, at once.
    """

    jobs = checks_for(results)
    found = plugin_problems(results, log)
    names = {c.setting.env for *_, c in jobs} | {
        s.env for r in results for s in r.scenario.settings().values()
    }
    pythons = {env: envs.python_for(env, log) for env in sorted(names)}
    # Each environment reads the checkpoints (its own process) while the validators work.
    with ThreadPoolExecutor(max_workers=1) as pool:
        drift = pool.submit(modelcheck.config_drift, results, pythons, log_dir, log)
        refused, problems = _checked(results, tokenizers, jobs, pythons, log_dir, log)
        problems = found + problems
        drifts = drift.result()
    if problems:
        raise ScenarioError(list(dict.fromkeys(problems)))
    return pythons, drifts, refused


def _checked(results, tokenizers, jobs, pythons, log_dir: Path, log: Log):
    """preflight's checks in the environments: (refused settings, problems)."""
    engine_problems([c for *_, c in jobs], pythons, log_dir)
    refused = {}
    for res, role, check in jobs:
        reason = refusal(check, pythons[check.setting.env])
        if reason:
            refused[(check.setting.key(), res.model_path)] = reason
            log(f"{res.scenario.name} [{role}]: cannot run here: {reason}")
    problems = modelcheck.weight_problems(results, log)
    problems += engine_problems(
        [c for *_, c in jobs if (c.setting.key(), c.model_path) not in refused], pythons, log_dir
    )
    lengths: dict[int, list[int]] = {}
    for res, role, check in jobs:
        if not limits(check, pythons[check.setting.env]):
            continue  # refused config (reported above), or no limits we know of
        if id(res) not in lengths:
            lengths[id(res)] = [
                len(p) for p in render(tokenizers[res.model_path], res.prompts, res.scenario.chat)
            ]
        problems += request_problems(
            check, pythons[check.setting.env], lengths[id(res)], sampling_for(res.scenario, role)
        )
    return refused, problems


def engine_problems(
    checks: list[Check],
    pythons: dict[str, str],
    log_dir: Path,
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

    todo: dict[str, dict[str, dict]] = {}
    for c in checks:
        python, key = pythons[c.setting.env], _key(c)
        if (python, key) not in _SEEN:
            todo.setdefault(python, {})[key] = json.loads(key)
    for python, items in todo.items():
        env = next(c.setting.env for c in checks if pythons[c.setting.env] == python)
        keys = list(items)
        reply = validate_engine_args(
            python, [items[k] for k in keys], log_dir / f"validate-{env}.log"
        )
        for i, key in enumerate(keys):
            _SEEN[(python, key)] = (
                [p for p in reply["problems"] if p["index"] == i],
                reply["vllm_version"],
                (reply.get("limits") or {}).get(str(i)) or {},
            )
    problems = set()
    for c in checks:
        found, version, _ = _SEEN[(pythons[c.setting.env], _key(c))]
        problems.update(_problem(c, p, version) for p in found)
    return sorted(problems)


def limits(check: Check, python: str) -> dict:
    """What the engine of a validated check lets a request ask: {"max_model_len",
    "max_logprobs"} as its config resolved them (empty when unknown)."""
    found = _SEEN.get((python, _key(check)))
    return found[2] if found else {}


def request_problems(
    check: Check,
    python: str,
    prompt_lens: list[int],
    sampling,
) -> list[Problem]:
    """Requests this engine would refuse: a prompt as long as its max_model_len (no room for
    one token; vLLM caps max_tokens silently but refuses such prompts), more logprobs than its
    max_logprobs."""
    lim = limits(check, python)
    out = []
    where, role = check.where, check.field.split(".")[0]
    max_len, longest = lim.get("max_model_len"), max(prompt_lens, default=0)
    if isinstance(max_len, int) and longest >= max_len:
        out.append(
            (
                where,
                "prompts",
                f"the longest prompt has {longest} tokens: the {role} engine's "
                f"max_model_len {max_len} leaves no room to generate; shorten the prompts "
                "or raise engine_args.max_model_len",
            )
        )
    max_lp = lim.get("max_logprobs")
    if isinstance(max_lp, int) and max_lp >= 0 and sampling.logprobs > max_lp:
        out.append(
            (
                where,
                "sampling.logprobs",
                f"{sampling.logprobs} exceeds the {role} engine's max_logprobs {max_lp}; "
                "ask for fewer or raise engine_args.max_logprobs",
            )
        )
    return out


def refusal(check: Check, python: str) -> str | None:
    """Why the vLLM of a validated check refuses, on this machine, a mode the setting selects
    by environment variable (the engine config builds without the variable, and no engine
    argument is to blame), or a feature an engine argument asks for that this machine cannot run
    (kind "refused": a weight-transfer backend); None when it does not. E.g. vLLM 0.32's CPU
    build with VLLM_USE_V2_MODEL_RUNNER=1: "Model Runner V2 requires Triton"."""
    found = _SEEN.get((python, _key(check)))
    if not found:
        return None
    machine = [p["message"] for p in found[0] if p.get("kind") == "refused"]
    if machine:  # e.g. a weight-transfer backend (parity.engines.vllm_transfer.refusal)
        return f"vLLM {found[1]} ({check.setting.env}) on this machine: {machine[0]}"
    names = [p["name"] for p in found[0] if p.get("kind") == "env"]
    if not names:
        return None
    message = next(p["message"] for p in found[0] if p.get("kind") == "env")
    reason = re.search(r"Value error, (.*?)(?: \[type=|$)", message)
    setting = ", ".join(f"{n}={check.setting.variables.get(n)}" for n in names)
    return (
        f"vLLM {found[1]} ({check.setting.env}) refuses {setting} on this machine: "
        f"{reason[1] if reason else message}"
    )


def _problem(c: Check, p: dict, version: str) -> Problem:
    where = f"vLLM {version} ({c.setting.env})"
    if p.get("kind") == "env":
        return (
            c.where,
            f"{c.field.split('.')[0]}.env_vars.{p['name']}",
            f"{where} refuses this mode on this machine: {p['message']}; run it where that "
            "vLLM supports it (or remove the variable)",
        )
    if p.get("kind") == "refused":  # a feature this machine cannot run (bisect: exit 2)
        return (
            c.where,
            f"{c.field}.{p['name']}",
            f"{where} cannot run this on this machine: {p['message']}",
        )
    if p.get("kind") == "env_value":
        return (
            c.where,
            f"{c.field.split('.')[0]}.env_vars.{p['name']}",
            f"{where} cannot read this value: {p['message']}; fix the value (or remove "
            "the variable)",
        )
    if p.get("kind", "name") == "name":
        close = p.get("suggestions") or []
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else "see vLLM's EngineArgs for the accepted names"
        )
        return (c.where, f"{c.field}.{p['name']}", f"not an engine argument of {where}; {hint}")
    fld = f"{c.field}.{p['name']}" if p.get("name") else c.field
    return (
        c.where,
        fld,
        f"{where} refuses this value: {p['message']}; fix the value "
        "(or remove it to use the engine's default)",
    )
