"""Choosing and shrinking scenarios from the command line: `-k PATTERN` and `--category` pick
scenarios, `--prompts`, `--max-tokens` and `--seed` override every picked scenario for a quick
run (each override recorded in the scenario's provenance as "cli"); `--suite NAME` names a list
of scenarios kept in scenarios/suites/NAME.toml. Pure but for reading the suite file:
scenarios in, (scenarios, problems) out."""

from __future__ import annotations

import dataclasses
import fnmatch
import tomllib
from pathlib import Path
from typing import Any

from parity.run.prompts import MAX_PROMPTS, parse_source
from parity.run.scenario import Scenario

Problem = tuple[str, str, str]


def matches(name: str, pattern: str) -> bool:
    """A scenario name matches a -k pattern: a glob (rl-*, *control) or a substring, any case."""
    name, pattern = name.lower(), pattern.lower()
    return fnmatch.fnmatchcase(name, pattern) or pattern in name


def suite_files(
    suite: str,
    root: Path = Path("scenarios"),
) -> tuple[list[Path], list[Problem]]:
    """The scenario files of a suite: `suite` is a name (root/suites/NAME.toml) or a suite
    file's path; the file lists scenario names (`scenarios = [...]`) found in root."""
    path = Path(suite) if suite.endswith(".toml") else root / "suites" / f"{suite}.toml"
    known = sorted(p.stem for p in (root / "suites").glob("*.toml"))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], [
            (
                "--suite",
                suite,
                f"no suite file {path}; the suites are: {', '.join(known) or 'none'}",
            )
        ]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return [], [(str(path), "(file)", f"not a readable TOML suite file: {exc}")]
    names = data.get("scenarios")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return [], [
            (
                str(path),
                "scenarios",
                "must be a non-empty list of scenario names, e.g. "
                'scenarios = ["logprobs-processed"]',
            )
        ]
    files, problems = [], []
    for name in names:
        file = root / f"{name}.toml"
        if file.is_file():
            files.append(file)
        else:
            problems.append(
                (
                    str(path),
                    "scenarios",
                    f"{name!r}: no {file}; list the names of scenario files in {root}/",
                )
            )
    unknown = sorted(set(data) - {"scenarios", "description"})
    problems += [
        (str(path), key, "unknown field; allowed: description, scenarios") for key in unknown
    ]
    return files, problems


def select(
    scenarios: list[Scenario],
    patterns: list[str],
    categories: list[str],
    known_categories: list[str],
) -> tuple[list[Scenario], list[Problem]]:
    """The scenarios whose name matches any pattern and whose category is any of `categories`
    (an empty list selects all); problems for unknown categories and for a selection that
    leaves nothing of the scenarios given."""
    problems: list[Problem] = []
    for cat in categories:
        if cat not in known_categories:
            problems.append(
                ("--category", cat, "unknown category; use one of " + ", ".join(known_categories))
            )
    picked = [
        s
        for s in scenarios
        if (not patterns or any(matches(s.name, p) for p in patterns))
        and (not categories or s.category in categories)
    ]
    if scenarios and not picked and not problems:  # (none loaded: the loader said why)
        asked = " and ".join(
            filter(
                None,
                [
                    "-k " + " -k ".join(patterns) if patterns else "",
                    "--category " + " --category ".join(categories) if categories else "",
                ],
            )
        )
        names = ", ".join(sorted(s.name for s in scenarios)) or "none"
        problems.append(
            (
                "-k/--category",
                "selection",
                f"{asked} selects no scenario; the scenarios are: {names}",
            )
        )
    return picked, problems


def override(
    scenarios: list[Scenario],
    prompts: int | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
) -> tuple[list[Scenario], list[Problem]]:
    """Every scenario with its number of prompts, max tokens and sampling seed replaced where
    given. Fewer tokens than a scenario's min_tokens make its verdict inconclusive, as always."""
    problems: list[Problem] = []
    if prompts is not None and not 1 <= prompts <= MAX_PROMPTS:
        problems.append(("--prompts", "value", f"{prompts}: must be in 1..{MAX_PROMPTS}"))
    if max_tokens is not None and not 1 <= max_tokens <= 1 << 20:
        problems.append(("--max-tokens", "value", f"{max_tokens}: must be in 1..1048576"))
    if seed is not None and not 0 <= seed < 1 << 63:
        problems.append(("--seed", "value", f"{seed}: must be in [0, 2^63)"))
    if problems:
        return scenarios, problems
    return [_override_one(s, prompts, max_tokens, seed) for s in scenarios], []


def _override_one(
    sc: Scenario, prompts: int | None, max_tokens: int | None, seed: int | None
) -> Scenario:
    changes: dict[str, Any] = {}
    provenance = dict(sc.provenance)
    if prompts is not None:
        if sc.prompt_items is not None:
            changes["prompt_items"] = sc.prompt_items[:prompts]
        else:
            name, _ = parse_source(sc.prompt_source or "")
            changes["prompt_source"] = f"{name}:{prompts}"
        provenance["prompts"] = "cli"
    sampling = {}
    if max_tokens is not None:
        sampling["max_tokens"] = max_tokens
        provenance["max_tokens"] = "cli"
    if seed is not None:
        sampling["seed"] = seed
        provenance["seed"] = "cli"
    if sampling:
        changes["sampling"] = dataclasses.replace(sc.sampling, **sampling)
        changes["engine_sampling"] = {
            role: {**over, **{k: v for k, v in sampling.items() if k in over}}
            for role, over in sc.engine_sampling.items()
        }
    return dataclasses.replace(sc, provenance=provenance, **changes) if changes else sc
