"""The steps of parsing a scenario file, one per group of fields (parse_scenario calls them in
turn): each returns what it parsed and adds its problems (file, field, message with the fix) to
the list it is given."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from parity import categories
from parity.categories.base import Category
from parity.engines.base import EngineSetting, SamplingSpec
from parity.engines.profiles import Profile
from parity.engines.setting_tables import from_table
from parity.run import scenario_fields as fields
from parity.run.prompts import REWARDS, parse_source
from parity.run.scenario_fields import Overrides, Problem
from parity.run.scoring import parse_reference
from parity.setup import inputs
from parity.verdicts.formulas import ClipRange


def category(data: dict, path: str, problems: list) -> Category | None:
    """The category the file names (None, and a problem, when it names none)."""
    name = data.get("category")
    found = categories.registry().get(name) if isinstance(name, str) else None
    if found is None:
        problems.append(
            (
                path,
                "category",
                f"{name!r} is not a category; use one of: {', '.join(categories.names())}",
            )
        )
    return found


def unknown_fields(data: dict, category: Category | None, path: str, problems: list) -> None:
    """A problem for each top-level field neither every scenario nor its category has."""
    allowed = fields.TOP_LEVEL | set(category.fields if category else ())
    for key in data:
        if key not in allowed:
            problems.append((path, key, f"unknown field; allowed: {', '.join(sorted(allowed))}"))


def model(data: dict, override: str | None, provenance: dict, path: str, problems: list):
    """The model, by the precedence rule (--model > $PARITY_MODEL > the file > the default);
    provenance["model"] says which."""
    value, provenance["model"] = inputs.precedence(
        override, "PARITY_MODEL", fields.string(data, "model", path, problems), fields.DEFAULT_MODEL
    )
    problems += fields.model_problems(value, provenance["model"], path)
    return value


def expectation(data: dict, category: Category | None, path: str, problems: list):
    """(expect, expect_diagnosis): the outcome the scenario expects, and its diagnosis (one of
    its category's or a generic one)."""
    expect = fields.string(data, "expect", path, problems, "pass")
    if expect not in fields.EXPECTS:
        problems.append(
            (
                path,
                "expect",
                f'{expect!r}: use "pass", "fail" (negative control) or '
                '"report" (a property of the hardware: measured, '
                "either outcome accepted)",
            )
        )
    diagnosis = fields.string(data, "expect_diagnosis", path, problems)
    if (
        diagnosis is not None
        and category is not None
        and diagnosis not in category.diagnoses
        and diagnosis not in fields.GENERIC_DIAGNOSES
    ):
        problems.append(
            (
                path,
                "expect_diagnosis",
                f"{diagnosis!r} is not a diagnosis of "
                f"category {category.name}; known: "
                + ", ".join(sorted(category.diagnoses) + list(fields.GENERIC_DIAGNOSES)),
            )
        )
    return expect, diagnosis


def report_within(
    data: dict, category: Category | None, expect: str, path: str, problems: list
) -> dict[str, float]:
    """The outer bounds of an `expect = "report"` scenario ([report_within]: finding name ->
    limit): required there (a measurement of the hardware may fail its tolerance, never by any
    amount), refused elsewhere; each names one of the category's bound findings."""
    if "report_within" not in data:
        if expect == "report":
            problems.append(
                (
                    path,
                    "report_within",
                    'expect = "report" needs an outer bound per bound finding, e.g. '
                    "[report_within] abs_dlogp_seqmean = 0.06: a failure within it is the "
                    "hardware's, one beyond it still fails",
                )
            )
        return {}
    if expect != "report":
        problems.append((path, "report_within", 'only an expect = "report" scenario has one'))
        return {}
    bounds = sorted(n for n, k in (category.findings if category else {}).items() if k == "bound")
    out = {}
    for name, value in fields.table(data, "report_within", path, problems).items():
        where = f"report_within.{name}"
        if name not in bounds:
            problems.append((path, where, f"not a bound finding; known: {', '.join(bounds)}"))
        elif fields.check_type(problems, path, where, value, float):
            if not (value >= 0 and value != float("inf")):
                problems.append((path, where, "must be a finite number >= 0"))
            else:
                out[name] = float(value)
    return out


def prompts(data: dict, path: str, problems: list) -> dict[str, Any]:
    """The [prompts] table as Scenario fields: prompt_source or prompt_items (exactly one),
    prompt_seed and chat."""
    table = fields.table(data, "prompts", path, problems)
    source, items = table.get("source"), table.get("items")
    if (source is None) == (items is None):
        problems.append(
            (
                path,
                "prompts",
                "give exactly one of prompts.source (e.g. "
                '"arithmetic:32") or prompts.items (a list of strings)',
            )
        )
    if source is not None:
        _source_problems(source, path, problems)
    if items is not None and not (
        isinstance(items, list) and items and all(isinstance(t, str) for t in items)
    ):
        problems.append((path, "prompts.items", "must be a non-empty list of strings"))
    for key in table:
        if key not in ("source", "items", "chat", "seed"):
            problems.append(
                (path, f"prompts.{key}", "unknown field; allowed: source, items, chat, seed")
            )
    chat = table.get("chat")
    if chat is not None and not isinstance(chat, bool):
        problems.append((path, "prompts.chat", "must be true or false (or absent: auto)"))
    seed = table.get("seed", 0)
    typed = fields.check_type(problems, path, "prompts.seed", seed, int)
    if typed and not 0 <= seed < 1 << 63:
        problems.append((path, "prompts.seed", "must be in [0, 2^63)"))
    seed = int(seed) if typed else seed
    return dict(prompt_source=source, prompt_items=items, prompt_seed=seed, chat=chat)


def _source_problems(source: Any, path: str, problems: list) -> None:
    try:
        parse_source(source)
    except (ValueError, TypeError, AttributeError) as exc:
        problems.append(
            (
                path,
                "prompts.source",
                f"{exc}"
                if isinstance(source, str)
                else f'must be a string such as "arithmetic:32", got {source!r}',
            )
        )


def sampling(data: dict, path: str, problems: list) -> SamplingSpec:
    """The [sampling] table: typed fields, each in its range."""
    spec = SamplingSpec(
        **fields.sampling_table(data.get("sampling", {}), "sampling", path, problems)
    )
    problems += fields.sampling_problems(spec, "sampling", path)
    return spec


def category_fields(
    category: Category | None, data: dict, sampling: SamplingSpec, path: str, problems: list
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(options, roles): the category's own fields parsed, and the engine roles they need
    (the candidate alone when the category is unknown)."""
    if category is None:
        return {}, ("candidate",)
    options, found = category.parse(data, sampling, path)
    problems += found
    return options, category.roles(options)


def engine_sampling(data: dict, sampling: SamplingSpec, path: str, problems: list):
    """role -> the sampling fields its [candidate.sampling] or [baseline.sampling] overrides,
    each checked over the scenario's sampling."""
    out: dict[str, dict[str, Any]] = {}
    for role in ("candidate", "baseline"):
        table = data.get(role, {})
        if isinstance(table, dict) and "sampling" in table:
            out[role] = fields.sampling_table(table["sampling"], f"{role}.sampling", path, problems)
            problems += fields.sampling_problems(
                replace(sampling, **out[role]), f"{role}.sampling", path
            )
    return out


def engine_settings(
    data: dict,
    roles: tuple[str, ...],
    overrides: Overrides,
    profiles: dict[str, Profile],
    provenance: dict,
    path: str,
    problems: list,
) -> tuple[EngineSetting, EngineSetting | None]:
    """(candidate, baseline): each role's engine setting (--candidate / --baseline over the
    file's table); a baseline exactly when the category compares two engines."""
    candidate, found = from_table(
        data.get("candidate", {}), "candidate", path, profiles, overrides.candidate
    )
    problems += found
    provenance["candidate"] = "cli" if overrides.candidate else "scenario"
    baseline = None
    if "baseline" in roles:
        if "baseline" in data or overrides.baseline:
            baseline, found = from_table(
                data.get("baseline", {}), "baseline", path, profiles, overrides.baseline
            )
            problems += found
            provenance["baseline"] = "cli" if overrides.baseline else "scenario"
        else:
            problems.append(
                (
                    path,
                    "baseline",
                    "this scenario compares two engines: add a "
                    '[baseline] table (e.g. profile = "v0")',
                )
            )
    elif "baseline" in data:
        problems.append(
            (
                path,
                "baseline",
                "this scenario judges one engine: a [baseline] would "
                "start an engine whose result is never used; remove it",
            )
        )
    return candidate, baseline


def judging(
    data: dict,
    category: Category | None,
    sampling: SamplingSpec,
    device: str | None,
    provenance: dict,
    path: str,
    problems: list,
    trainer: str | None = None,
) -> dict[str, Any]:
    """How the scenario is judged, as Scenario fields: the [reference] table (head, device by
    the precedence rule over `device`, scores file, scorer, semantics by the precedence rule
    over the `trainer` preset), tolerances, margins and clip."""
    reference, found = parse_reference(
        fields.table(data, "reference", path, problems), category, sampling, path, device, trainer
    )
    problems += found
    provenance["reference_device"] = reference["device_source"]
    provenance["reference_semantics"] = reference["semantics_source"]
    tolerances = fields.limits(
        data, "tolerances", category.tolerances if category else {}, path, problems
    )
    margins = fields.limits(data, "margins", category.margins if category else {}, path, problems)
    clip_data = fields.table(data, "clip", path, problems)
    try:
        clip = ClipRange(**clip_data)
    except (TypeError, ValueError) as exc:
        problems.append((path, "clip", f"{exc}; use eps_low / eps_high, e.g. 0.2 / 0.28"))
        clip = ClipRange()
    return dict(
        head_dtype=reference["head_dtype"],
        tolerances=tolerances,
        clip=clip,
        margins=margins,
        reference_device=reference["device"],
        scores=reference["scores"],
        reference_scorer=reference["scorer"],
        semantics=reference["semantics"],
        trainer=reference["trainer"],
    )


def reward(data: dict, source: Any, path: str, problems: list) -> str | None:
    """The reward function's name; an rl scenario on arithmetic prompts gets exact_match."""
    name = fields.string(data, "reward", path, problems)
    if (
        name is None
        and data.get("category") == "rl"
        and isinstance(source, str)
        and source.startswith("arithmetic")
    ):
        name = "exact_match"
    if name is not None and name not in REWARDS:
        problems.append((path, "reward", f"unknown reward {name!r}; known: {', '.join(REWARDS)}"))
    return name


def min_tokens(data: dict, path: str, problems: list):
    """Fewer sampled tokens than this and the verdict is inconclusive."""
    value = data.get("min_tokens", fields.DEFAULT_MIN_TOKENS)
    if fields.check_type(problems, path, "min_tokens", value, int) and value < 0:
        problems.append((path, "min_tokens", "must be >= 0"))
    return value


def names(data: dict, stem: str, path: str, problems: list) -> tuple[str, str]:
    """(name, description): the name defaults to the file's stem."""
    name = fields.string(data, "name", path, problems, stem)
    return name, fields.string(data, "description", path, problems, "")


def settled(scenario, category: Category, options: dict[str, Any], path: str) -> list[Problem]:
    """Problems only visible once the engine settings are known: the category's own, and a
    served engine (engine "openai") for engine work a server cannot do."""
    found = category.check_settings(scenario, path)
    refusal = category.served_refusal(options)
    found += [
        (path, f"{role}.engine", refusal)
        for role, setting in scenario.settings().items()
        if setting.engine == "openai" and refusal
    ]
    return found
