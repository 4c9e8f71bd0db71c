"""Scenario files (scenarios/*.toml) and engine profiles: parsing, full validation before any
engine starts (every problem reported at once), and the precedence of settings.

Precedence, one rule everywhere: command line > environment variable > scenario file > defaults.
Each effective value records where it came from (`Scenario.provenance`).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from parity.engines.base import EngineSetting, SamplingSpec
from parity.metrics import ClipRange
from parity.prompts import REWARDS, parse_source

# Categories and whether they need a baseline engine. More arrive with later categories.
CATEGORIES = {"logprobs": False, "rl": True, "runtime": False, "lm_head": False,
              "weight_update": False}
# runtime probes (scenario field `probe`); config_diff compares two engines, the others one.
PROBES = ("config_diff", "prefix_cache", "batch_invariance", "prefill_consistency")
HEADS = ("float32", "model")
# Tolerance names a scenario may set, with the defaults used when it does not (see README,
# "How the tolerances were chosen").
# Runtime probes compare two runs of one engine: only kernel/batching noise may separate them.
# Calibrated on the tiny model and SmolLM2-135M, bf16, CPU (see README, runtime probes).
RUNTIME_ABS_DLOGP = 0.02
RUNTIME_KL_K3 = 0.002
DEFAULT_TOLERANCES = {
    "logprobs": {"abs_dlogp_mean": 0.06, "kl_k3_mean": 0.01, "abs_dlogp_p99": 0.6},
    # runtime probes: two runs of the same engine on the same tokens (numeric noise only).
    "runtime": {"abs_dlogp_mean": RUNTIME_ABS_DLOGP, "kl_k3_mean": RUNTIME_KL_K3},
    # weight updates: engine vs the reference the update predicts (bf16 noise ~0.04, FACTS.md).
    "weight_update": {"abs_dlogp_mean": 0.05},
}
# Baseline-vs-candidate margins (category "rl"), in each metric's own unit; see README
# "How the margins were chosen" for the run-to-run noise they come from.
DEFAULT_MARGINS = {
    "rl": {"kl_k3": 0.005, "abs_dlogp": 0.01, "clip_rate": 0.03, "entropy": 0.2, "reward": 0.2},
}
SAMPLING_FIELDS = {"temperature": float, "top_p": float, "top_k": int, "max_tokens": int,
                   "seed": int, "n": int, "logprobs": int}
TOP_LEVEL = {"name", "category", "description", "model", "expect", "expect_diagnosis", "reward",
             "prompts", "sampling", "candidate", "baseline", "reference", "tolerances", "clip",
             "min_tokens", "margins", "probe", "require_head", "update"}
SETTING_FIELDS = {"profile", "engine_args", "env_vars", "env"}
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_MIN_TOKENS = 200  # fewer sampled tokens than this: the verdict is inconclusive


class ScenarioError(Exception):
    """One or more problems in scenario files: each is (file, field, message-with-fix)."""

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{f}: {fld}: {msg}" for f, fld, msg in problems))


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


@dataclass
class Scenario:
    """A validated scenario: everything needed to run it, with provenance of each value."""

    path: Path
    name: str
    category: str
    description: str
    model: str
    prompt_source: str | None
    prompt_items: list[str] | None
    prompt_seed: int
    chat: bool | None
    sampling: SamplingSpec
    candidate: EngineSetting
    baseline: EngineSetting | None
    head_dtype: str
    tolerances: dict[str, float]
    clip: ClipRange
    margins: dict[str, float] = field(default_factory=dict)
    expect: str = "pass"
    expect_diagnosis: str | None = None
    reward: str | None = None
    min_tokens: int = DEFAULT_MIN_TOKENS
    provenance: dict[str, str] = field(default_factory=dict)
    probe: str | None = None  # runtime / weight_update categories: which probe
    update: Any = None  # weight_update category: parity.updates.UpdateSpec
    require_head: str = "float32"  # lm_head category: the head dtype the engine must use

    def settings(self) -> dict[str, EngineSetting]:
        out = {"candidate": self.candidate}
        if self.baseline is not None:
            out["baseline"] = self.baseline
        return out


@dataclass
class Overrides:
    """Command-line overrides; None means "not given" so the file's value stands."""

    model: str | None = None
    candidate: str | None = None
    baseline: str | None = None


def _check_type(problems, path, fld, value, typ) -> bool:
    ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        problems.append((path, fld, f"expected {typ.__name__}, got {type(value).__name__} "
                                    f"{value!r}"))
    return ok


def _setting(data, role, path, problems, profiles, override) -> EngineSetting | None:
    if not isinstance(data, dict):
        problems.append((path, role, "must be a table like [candidate] with profile = \"...\""))
        return None
    for key in data:
        if key not in SETTING_FIELDS:
            problems.append((path, f"{role}.{key}", f"unknown field; allowed: "
                                                    f"{', '.join(sorted(SETTING_FIELDS))}"))
    profile = override or data.get("profile", "v1-defaults")
    if profile not in profiles:
        problems.append((path, f"{role}.profile", f"unknown profile {profile!r}; built-in "
                                                  f"profiles: {', '.join(profiles)}"))
        return None
    args = data.get("engine_args", {})
    env_vars = data.get("env_vars", {})
    for fld, value in ((f"{role}.engine_args", args), (f"{role}.env_vars", env_vars)):
        if not isinstance(value, dict):
            problems.append((path, fld, "must be a table, e.g. { key = value }"))
            return None
    env = data.get("env")
    if env is not None and not isinstance(env, str):
        problems.append((path, f"{role}.env", "must be an environment name such as \"v0\""))
        return None
    return make_setting(profile, args, env_vars, env, profiles)


def parse_scenario(path: Path, overrides: Overrides | None = None,
                   profiles: dict[str, Profile] | None = None,
                   ) -> tuple[Scenario | None, list[tuple[str, str, str]]]:
    """Parse and validate one scenario file; returns (scenario or None, problems)."""
    overrides = overrides or Overrides()
    profiles = profiles or load_profiles()
    problems: list[tuple[str, str, str]] = []
    p = str(path)
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return None, [(p, "(file)", f"cannot read TOML: {exc}")]
    for key in data:
        if key not in TOP_LEVEL:
            problems.append((p, key, f"unknown field; allowed: {', '.join(sorted(TOP_LEVEL))}"))

    category = data.get("category")
    if category not in CATEGORIES:
        problems.append((p, "category", f"{category!r} is not a category; use one of: "
                                        f"{', '.join(CATEGORIES)}"))
    provenance: dict[str, str] = {}
    model, provenance["model"] = _precedence(overrides.model, "PARITY_MODEL",
                                             data.get("model"), DEFAULT_MODEL)
    expect = data.get("expect", "pass")
    if expect not in ("pass", "fail"):
        problems.append((p, "expect", f"{expect!r}: use \"pass\" or \"fail\" (negative control)"))

    # prompts
    prompts = data.get("prompts", {})
    source, items = prompts.get("source"), prompts.get("items")
    if (source is None) == (items is None):
        problems.append((p, "prompts", "give exactly one of prompts.source (e.g. "
                                       "\"arithmetic:32\") or prompts.items (a list of strings)"))
    if source is not None:
        try:
            parse_source(source)
        except ValueError as exc:
            problems.append((p, "prompts.source", str(exc)))
    if items is not None and not (isinstance(items, list) and items
                                  and all(isinstance(t, str) for t in items)):
        problems.append((p, "prompts.items", "must be a non-empty list of strings"))
    for key in prompts:
        if key not in ("source", "items", "chat", "seed"):
            problems.append((p, f"prompts.{key}", "unknown field; allowed: source, items, chat, "
                                                  "seed"))

    # sampling
    raw_sampling = data.get("sampling", {})
    kwargs = {}
    for key, value in raw_sampling.items():
        if key not in SAMPLING_FIELDS:
            problems.append((p, f"sampling.{key}", "unknown field; allowed: "
                                                   + ", ".join(SAMPLING_FIELDS)))
        elif _check_type(problems, p, f"sampling.{key}", value, SAMPLING_FIELDS[key]):
            kwargs[key] = SAMPLING_FIELDS[key](value)
    sampling = SamplingSpec(**kwargs)
    if not 0 <= sampling.temperature:
        problems.append((p, "sampling.temperature", "must be >= 0"))
    if not 0 < sampling.top_p <= 1:
        problems.append((p, "sampling.top_p", "must be in (0, 1]"))
    if sampling.top_k < 0 or sampling.max_tokens < 1 or sampling.n < 1:
        problems.append((p, "sampling", "top_k must be >= 0 (0 = off), max_tokens and n >= 1"))
    if category == "logprobs" and not sampling.is_processed_distinct:
        problems.append((p, "sampling", "a logprobs check needs temperature != 1 or top_p < 1 "
                                        "or top_k > 0: otherwise raw and processed logprobs are "
                                        "equal and the check cannot fail"))

    # category-specific fields
    probe = data.get("probe", "config_diff" if category == "runtime" else None)
    if "probe" in data and category not in ("runtime", "weight_update"):
        problems.append((p, "probe", "only the runtime and weight_update categories have probes"))
    elif category == "runtime" and probe not in PROBES:
        problems.append((p, "probe", f"{probe!r}: use one of {', '.join(PROBES)}"))
    update = None
    if category == "weight_update":
        from parity.updates import PROBES as UPDATE_PROBES
        from parity.updates import parse_update

        if probe not in UPDATE_PROBES:
            problems.append((p, "probe", f"{probe!r}: a weight_update scenario needs probe = one "
                                         f"of {', '.join(UPDATE_PROBES)}"))
        update, found = parse_update(data.get("update"), p)
        problems += found
    elif "update" in data:
        problems.append((p, "update", "only the weight_update category has an update table"))
    require_head = data.get("require_head", "float32")
    if "require_head" in data and category != "lm_head":
        problems.append((p, "require_head", "only the lm_head category requires a head"))
    elif require_head not in HEADS:
        problems.append((p, "require_head", f"{require_head!r}: use \"float32\" or \"model\""))
    if category == "lm_head" and sampling.logprobs < 1:
        problems.append((p, "sampling.logprobs", "an lm_head check needs logprobs >= 1: the "
                                                 "head dtype is read from the differences "
                                                 "between the top logprobs"))

    # engines
    candidate = _setting(data.get("candidate", {}), "candidate", p, problems, profiles,
                         overrides.candidate)
    provenance["candidate"] = "cli" if overrides.candidate else "scenario"
    baseline = None
    if "baseline" in data or overrides.baseline:
        baseline = _setting(data.get("baseline", {}), "baseline", p, problems, profiles,
                            overrides.baseline)
        provenance["baseline"] = "cli" if overrides.baseline else "scenario"
    elif CATEGORIES.get(category) or probe == "config_diff":
        what = f"category {category!r}" if CATEGORIES.get(category) else "probe config_diff"
        problems.append((p, "baseline", f"{what} compares two engines: add a [baseline] table "
                                        "(e.g. profile = \"v0\")"))

    # reference, tolerances, clip
    head_dtype = data.get("reference", {}).get("head_dtype", "float32")
    if head_dtype not in ("float32", "model"):
        problems.append((p, "reference.head_dtype", f"{head_dtype!r}: use \"float32\" or "
                                                    "\"model\""))
    tolerances = dict(DEFAULT_TOLERANCES.get(category, {}))
    for key, value in data.get("tolerances", {}).items():
        if key not in tolerances:
            problems.append((p, f"tolerances.{key}", "unknown tolerance for this category; "
                                                     f"known: {', '.join(tolerances) or 'none'}"))
        elif _check_type(problems, p, f"tolerances.{key}", value, float):
            tolerances[key] = float(value)
    margins = dict(DEFAULT_MARGINS.get(category, {}))
    for key, value in data.get("margins", {}).items():
        if key not in margins:
            problems.append((p, f"margins.{key}", "unknown margin for this category; "
                                                  f"known: {', '.join(margins) or 'none'}"))
        elif _check_type(problems, p, f"margins.{key}", value, float):
            margins[key] = float(value)
    clip_data = data.get("clip", {})
    try:
        clip = ClipRange(**clip_data)
    except (TypeError, ValueError) as exc:
        problems.append((p, "clip", f"{exc}; use eps_low / eps_high, e.g. 0.2 / 0.28"))
        clip = ClipRange()
    reward = data.get("reward")
    if reward is None and category == "rl" and source and source.startswith("arithmetic"):
        reward = "exact_match"
    if reward is not None and reward not in REWARDS:
        problems.append((p, "reward", f"unknown reward {reward!r}; known: {', '.join(REWARDS)}"))
    min_tokens = data.get("min_tokens", DEFAULT_MIN_TOKENS)
    _check_type(problems, p, "min_tokens", min_tokens, int)

    if problems:
        return None, problems
    return Scenario(
        path=Path(path), name=data.get("name", Path(path).stem), category=category,
        description=data.get("description", ""), model=model, prompt_source=source,
        prompt_items=items, prompt_seed=int(prompts.get("seed", 0)), chat=prompts.get("chat"),
        sampling=sampling, candidate=candidate, baseline=baseline, head_dtype=head_dtype,
        tolerances=tolerances, clip=clip, margins=margins, expect=expect,
        expect_diagnosis=data.get("expect_diagnosis"), reward=reward, min_tokens=min_tokens,
        provenance=provenance, probe=probe, require_head=require_head, update=update,
    ), []


def _precedence(cli_value, env_name, file_value, default):
    """(value, source) by the one precedence rule: cli > environment > scenario > default."""
    if cli_value is not None:
        return cli_value, "cli"
    if os.environ.get(env_name):
        return os.environ[env_name], f"env:{env_name}"
    if file_value is not None:
        return file_value, "scenario"
    return default, "default"


def discover(targets: list[Path]) -> list[Path]:
    """Scenario files named directly, or every *.toml in named directories (sorted)."""
    files: list[Path] = []
    for target in targets:
        if target.is_dir():
            files += sorted(target.glob("*.toml"))
        else:
            files.append(target)
    return files


def load_scenarios(targets: list[Path], overrides: Overrides | None = None) -> list[Scenario]:
    """Load and validate every scenario; raises ScenarioError listing all problems at once."""
    files = discover(targets)
    problems: list[tuple[str, str, str]] = []
    if not files:
        problems.append((", ".join(map(str, targets)) or "(none)", "(path)",
                         "no scenario files found: pass .toml files or a directory holding them"))
    scenarios, names = [], {}
    profiles = load_profiles()
    for f in files:
        if not f.exists():
            problems.append((str(f), "(file)", "does not exist"))
            continue
        scenario, found = parse_scenario(f, overrides, profiles)
        problems += found
        if scenario is not None:
            if scenario.name in names:
                problems.append((str(f), "name", f"duplicate scenario name {scenario.name!r} "
                                                 f"(also in {names[scenario.name]})"))
            names[scenario.name] = str(f)
            scenarios.append(scenario)
    if problems:
        raise ScenarioError(problems)
    return scenarios
