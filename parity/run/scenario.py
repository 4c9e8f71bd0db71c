"""Scenario files (scenarios/*.toml) and engine profiles: parsing, full validation before any
engine starts (every problem reported at once), and the precedence of settings.

Precedence, one rule everywhere: command line > environment variable > scenario file > defaults.
Each effective value records where it came from (`Scenario.provenance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from parity import categories
from parity.engines.base import EngineSetting, SamplingSpec
from parity.engines.settings import SETTING_FIELDS, Profile, from_table, load_profiles, make_setting  # noqa: F401
from parity.run.prompts import REWARDS, parse_source
from parity.run.scoring import parse_reference
from parity.setup import inputs
from parity.setup.models import MODEL_NAMES, is_built_name
from parity.verdicts.metrics import ClipRange

SAMPLING_FIELDS = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "max_tokens": int,
    "seed": int,
    "n": int,
    "logprobs": int,
}
# Fields every scenario may have; a category adds its own (Category.fields).
TOP_LEVEL = {
    "name",
    "category",
    "description",
    "model",
    "expect",
    "expect_diagnosis",
    "reward",
    "prompts",
    "sampling",
    "candidate",
    "baseline",
    "reference",
    "tolerances",
    "clip",
    "min_tokens",
    "margins",
}
EXPECTS = ("pass", "fail", "report")
# Diagnoses the runner gives in every category: an engine that does not run the trainer's model,
# and an engine environment that would read the checkpoint differently (found before start).
GENERIC_DIAGNOSES = ("model_mismatch", "config_drift")
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_MIN_TOKENS = 200  # fewer sampled tokens than this: the verdict is inconclusive


class ScenarioError(Exception):
    """One or more problems in scenario files: each is (file, field, message-with-fix)."""

    def __init__(self, problems: list[tuple[str, str, str]]):
        # An empty key ("" = 1 is valid TOML) is shown quoted, never as an empty field.
        self.problems = [(f or '""', fld or '""', msg) for f, fld, msg in problems]
        problems = self.problems
        super().__init__("\n".join(f"{f}: {fld}: {msg}" for f, fld, msg in problems))


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
    options: dict[str, Any] = field(default_factory=dict)  # the category's own fields, parsed
    engine_sampling: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> overrides
    reference_device: str = (
        "auto"  # where the HF reference runs (parity.trainer.reference.resolve_device)
    )
    scores: Path | None = None  # trainer scores file standing in for the HF reference
    reference_scorer: str = "hf"  # the trainer-side scorer (parity.trainer registry)

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
    reference_device: str | None = None


def _check_type(problems, path, fld, value, typ) -> bool:
    ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        problems.append(
            (path, fld, f"expected {typ.__name__}, got {type(value).__name__} {value!r}")
        )
    return ok


def _table(data: dict, key: str, path: str, problems: list) -> dict:
    """data[key] as a table ({} when absent); a problem when it is something else."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.append(
            (
                path,
                key,
                f"must be a table ([{key}] or {key} = {{ ... }}), got {type(value).__name__}",
            )
        )
        return {}
    return value


def _name(data: dict, key: str, path: str, problems: list, default=None):
    """data[key] as a string (default when absent); a problem when it is something else."""
    value = data.get(key, default)
    if value is not None and not isinstance(value, str):
        problems.append((path, key, f"must be a string, got {type(value).__name__} {value!r}"))
        return default
    return value


def _sampling(raw: Any, fld: str, path: str, problems: list) -> dict[str, Any]:
    """Validated sampling fields (typed), each problem recorded."""
    if not isinstance(raw, dict):
        problems.append((path, fld, "must be a table of sampling fields"))
        return {}
    kwargs = {}
    for key, value in raw.items():
        if key not in SAMPLING_FIELDS:
            problems.append(
                (path, f"{fld}.{key}", "unknown field; allowed: " + ", ".join(SAMPLING_FIELDS))
            )
        elif _check_type(problems, path, f"{fld}.{key}", value, SAMPLING_FIELDS[key]):
            kwargs[key] = SAMPLING_FIELDS[key](value)
    return kwargs


def parse_scenario(
    path: Path,
    overrides: Overrides | None = None,
    profiles: dict[str, Profile] | None = None,
) -> tuple[Scenario | None, list[tuple[str, str, str]]]:
    """Parse and validate one scenario file; returns (scenario or None, problems)."""

    overrides = overrides or Overrides()
    profiles = profiles or load_profiles()
    problems: list[tuple[str, str, str]] = []
    p = str(path)
    data, why = inputs.read_toml(Path(path))
    if data is None:
        return None, [(p, "(file)", why)]

    category_name = data.get("category")
    category = categories.registry().get(category_name) if isinstance(category_name, str) else None
    if category is None:
        problems.append(
            (
                p,
                "category",
                f"{category_name!r} is not a category; use one of: {', '.join(categories.names())}",
            )
        )
    allowed = TOP_LEVEL | set(category.fields if category else ())
    for key in data:
        if key not in allowed:
            problems.append((p, key, f"unknown field; allowed: {', '.join(sorted(allowed))}"))
    provenance: dict[str, str] = {}
    model, provenance["model"] = inputs.precedence(
        overrides.model, "PARITY_MODEL", _name(data, "model", p, problems), DEFAULT_MODEL
    )
    problems += _model_problems(model, provenance["model"], p)
    expect = _name(data, "expect", p, problems, "pass")
    if expect not in EXPECTS:
        problems.append(
            (
                p,
                "expect",
                f'{expect!r}: use "pass", "fail" (negative control) or '
                '"report" (a property of the hardware: measured, '
                "either outcome accepted)",
            )
        )
    expect_diagnosis = _name(data, "expect_diagnosis", p, problems)
    if (
        expect_diagnosis is not None
        and category is not None
        and expect_diagnosis not in category.diagnoses
        and expect_diagnosis not in GENERIC_DIAGNOSES
    ):
        problems.append(
            (
                p,
                "expect_diagnosis",
                f"{expect_diagnosis!r} is not a diagnosis of "
                f"category {category.name}; known: "
                + ", ".join(sorted(category.diagnoses) + list(GENERIC_DIAGNOSES)),
            )
        )

    # prompts
    prompts = _table(data, "prompts", p, problems)
    source, items = prompts.get("source"), prompts.get("items")
    if (source is None) == (items is None):
        problems.append(
            (
                p,
                "prompts",
                "give exactly one of prompts.source (e.g. "
                '"arithmetic:32") or prompts.items (a list of strings)',
            )
        )
    if source is not None:
        try:
            parse_source(source)
        except (ValueError, TypeError, AttributeError) as exc:
            problems.append(
                (
                    p,
                    "prompts.source",
                    f"{exc}"
                    if isinstance(source, str)
                    else f'must be a string such as "arithmetic:32", got {source!r}',
                )
            )
    if items is not None and not (
        isinstance(items, list) and items and all(isinstance(t, str) for t in items)
    ):
        problems.append((p, "prompts.items", "must be a non-empty list of strings"))
    for key in prompts:
        if key not in ("source", "items", "chat", "seed"):
            problems.append(
                (p, f"prompts.{key}", "unknown field; allowed: source, items, chat, seed")
            )
    chat = prompts.get("chat")
    if chat is not None and not isinstance(chat, bool):
        problems.append((p, "prompts.chat", "must be true or false (or absent: auto)"))
    prompt_seed = prompts.get("seed", 0)
    if (
        _check_type(problems, p, "prompts.seed", prompt_seed, int)
        and not 0 <= prompt_seed < 1 << 63
    ):
        problems.append((p, "prompts.seed", "must be in [0, 2^63)"))

    # sampling
    sampling = SamplingSpec(**_sampling(data.get("sampling", {}), "sampling", p, problems))
    problems += sampling_problems(sampling, "sampling", p)

    # category-specific fields
    options: dict[str, Any] = {}
    roles: tuple[str, ...] = ("candidate",)
    if category is not None:
        options, found = category.parse(data, sampling, p)
        problems += found
        roles = category.roles(options)

    # engines
    engine_sampling: dict[str, dict[str, Any]] = {}
    for role in ("candidate", "baseline"):
        table = data.get(role, {})
        if isinstance(table, dict) and "sampling" in table:
            engine_sampling[role] = _sampling(table["sampling"], f"{role}.sampling", p, problems)
            problems += sampling_problems(
                replace(sampling, **engine_sampling[role]), f"{role}.sampling", p
            )
    candidate, found = from_table(
        data.get("candidate", {}), "candidate", p, profiles, overrides.candidate
    )
    problems += found
    provenance["candidate"] = "cli" if overrides.candidate else "scenario"
    baseline = None
    if "baseline" in roles:
        if "baseline" in data or overrides.baseline:
            baseline, found = from_table(
                data.get("baseline", {}), "baseline", p, profiles, overrides.baseline
            )
            problems += found
            provenance["baseline"] = "cli" if overrides.baseline else "scenario"
        else:
            problems.append(
                (
                    p,
                    "baseline",
                    "this scenario compares two engines: add a "
                    '[baseline] table (e.g. profile = "v0")',
                )
            )
    elif "baseline" in data:
        problems.append(
            (
                p,
                "baseline",
                "this scenario judges one engine: a [baseline] would "
                "start an engine whose result is never used; remove it",
            )
        )

    # reference (head, device, scores file), tolerances, margins, clip

    reference, found = parse_reference(
        _table(data, "reference", p, problems), category, sampling, p, overrides.reference_device
    )
    problems += found
    head_dtype, provenance["reference_device"] = (
        reference["head_dtype"],
        reference["device_source"],
    )
    tolerances = _limits(data, "tolerances", category.tolerances if category else {}, p, problems)
    margins = _limits(data, "margins", category.margins if category else {}, p, problems)
    clip_data = _table(data, "clip", p, problems)
    try:
        clip = ClipRange(**clip_data)
    except (TypeError, ValueError) as exc:
        problems.append((p, "clip", f"{exc}; use eps_low / eps_high, e.g. 0.2 / 0.28"))
        clip = ClipRange()
    reward = _name(data, "reward", p, problems)
    if (
        reward is None
        and category_name == "rl"
        and isinstance(source, str)
        and source.startswith("arithmetic")
    ):
        reward = "exact_match"
    if reward is not None and reward not in REWARDS:
        problems.append((p, "reward", f"unknown reward {reward!r}; known: {', '.join(REWARDS)}"))
    min_tokens = data.get("min_tokens", DEFAULT_MIN_TOKENS)
    if _check_type(problems, p, "min_tokens", min_tokens, int) and min_tokens < 0:
        problems.append((p, "min_tokens", "must be >= 0"))
    name = _name(data, "name", p, problems, Path(path).stem)
    description = _name(data, "description", p, problems, "")

    if problems:
        return None, problems
    scenario = Scenario(
        path=Path(path),
        name=name,
        category=category_name,
        description=description,
        model=model,
        prompt_source=source,
        prompt_items=items,
        prompt_seed=int(prompt_seed),
        chat=chat,
        sampling=sampling,
        candidate=candidate,
        baseline=baseline,
        head_dtype=head_dtype,
        tolerances=tolerances,
        clip=clip,
        margins=margins,
        expect=expect,
        expect_diagnosis=expect_diagnosis,
        reward=reward,
        min_tokens=min_tokens,
        provenance=provenance,
        options=options,
        engine_sampling=engine_sampling,
        reference_device=reference["device"],
        scores=reference["scores"],
        reference_scorer=reference["scorer"],
    )
    found = category.check_settings(scenario, p)
    refusal = category.served_refusal(options)
    found += [
        (p, f"{role}.engine", refusal)
        for role, setting in scenario.settings().items()
        if setting.engine == "openai" and refusal
    ]
    return (None, found) if found else (scenario, [])


# vLLM refuses more than this many logprobs per position (max_logprobs default, docs/measurements.md#max-logprobs).
MAX_LOGPROBS = 20


def sampling_problems(sampling: SamplingSpec, fld: str, path: str) -> list[tuple[str, str, str]]:
    """Range problems of a sampling spec (checked before any engine sees it)."""

    out = []
    if not (math.isfinite(sampling.temperature) and 0 <= sampling.temperature <= 100):
        out.append((path, f"{fld}.temperature", "must be a finite number in [0, 100]"))
    if not 0 < sampling.top_p <= 1:
        out.append((path, f"{fld}.top_p", "must be in (0, 1]"))
    if sampling.top_k < 0:
        out.append((path, f"{fld}.top_k", "must be >= 0 (0 = off)"))
    if not 1 <= sampling.max_tokens <= 1 << 20:
        out.append((path, f"{fld}.max_tokens", "must be in [1, 1048576]"))
    if not 1 <= sampling.n <= 1024:
        out.append((path, f"{fld}.n", "must be in [1, 1024]"))
    if not 0 <= sampling.logprobs <= MAX_LOGPROBS:
        out.append((path, f"{fld}.logprobs", f"must be in [0, {MAX_LOGPROBS}] (vLLM's limit)"))
    if sampling.seed is not None and not 0 <= sampling.seed < 1 << 63:
        out.append((path, f"{fld}.seed", "must be in [0, 2^63)"))
    return out


def _limits(
    data: dict,
    key: str,
    defaults: dict[str, float],
    path: str,
    problems: list,
) -> dict[str, float]:
    """Tolerances or margins: the category's defaults with the file's values over them."""
    out = dict(defaults)
    for name, value in _table(data, key, path, problems).items():
        if name not in out:
            problems.append(
                (
                    path,
                    f"{key}.{name}",
                    f"unknown {key[:-1]} for this category; known: {', '.join(out) or 'none'}",
                )
            )
        elif _check_type(problems, path, f"{key}.{name}", value, float):
            if not (value >= 0 and value != float("inf")):
                problems.append((path, f"{key}.{name}", "must be a finite number >= 0"))
            else:
                out[name] = float(value)
    return out


def _model_problems(model: Any, source: str, path: str) -> list[tuple[str, str, str]]:
    """The model must name a checkpoint (checked without building anything); a bad --model or
    $PARITY_MODEL is blamed on the option, not the file."""

    message = inputs.model_problem(model, MODEL_NAMES, is_built_name)
    if message is None:
        return []
    where = {"cli": "--model"}.get(source, "$" + source[4:] if source.startswith("env:") else path)
    return [(where, "model", message)]


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
    if not targets:
        problems.append(
            (
                "(none)",
                "(path)",
                "no scenario files given: pass .toml files or a directory holding them",
            )
        )
    for target in targets:
        if target.is_dir() and not any(target.glob("*.toml")):
            problems.append(
                (
                    str(target),
                    "(path)",
                    "a directory with no *.toml scenario files "
                    "in it: name the files or their directory",
                )
            )
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
                problems.append(
                    (
                        str(f),
                        "name",
                        f"duplicate scenario name {scenario.name!r} "
                        f"(also in {names[scenario.name]})",
                    )
                )
            names[scenario.name] = str(f)
            scenarios.append(scenario)
    if problems:
        raise ScenarioError(list(dict.fromkeys(problems)))  # one bad option: reported once
    return scenarios
