"""The engine plan of a run: one engine per distinct (setting, model) and the (scenario, role)
jobs it serves, which engines need not start, and the records a dry run reports."""

from __future__ import annotations

import json

from parity import categories
from parity.categories.base import sampling_for
from parity.engines.base import EngineSetting
from parity.run.results import ScenarioResult

Where = tuple[str, str]  # (setting key, model path): one engine
Job = tuple[ScenarioResult, str]  # a scenario and the role the engine plays in it
Plan = dict[Where, list[Job]]


def plan_engines(results: list[ScenarioResult]) -> Plan:
    """(setting key, model) -> the (scenario, role) jobs one engine serves, in the order the
    scenarios and their roles come (the order the engines start)."""
    plan: Plan = {}
    for res in results:
        for role, setting in res.scenario.settings().items():
            plan.setdefault((setting.key(), res.model_path), []).append((res, role))
    return plan


def doomed_scenarios(plan: Plan, refused: dict[Where, str]) -> set[int]:
    """id() of each scenario with an engine that cannot run here (preflight's refusals): it is
    unresolved whatever its other engines do, so those start only when another scenario needs
    them."""
    return {id(r) for where, jobs in plan.items() if where in refused for r, _ in jobs}


def serves_only_doomed(jobs: list[Job], doomed: set[int]) -> bool:
    """Whether every scenario an engine serves is doomed (the engine is not needed)."""
    return all(id(r) in doomed for r, _ in jobs)


def setting_of(jobs: list[Job]) -> EngineSetting:
    """The setting of the engine serving `jobs` (every job's role has that setting)."""
    res, role = jobs[0]
    return res.scenario.settings()[role]


def dry_run_records(plan: Plan, refused: dict[Where, str], doomed: set[int]) -> list[dict]:
    """run.engines of a dry run: each planned engine, and why it would not start."""
    return [
        {
            "n": n,
            "setting": setting_of(jobs).to_dict(),
            "model": where[1],
            "planned": True,
            "scenarios": [r.scenario.name for r, _ in jobs],
            "shared_generations": shared_generations(jobs),
            **_dry_run_skip(where, jobs, refused, doomed),
        }
        for n, (where, jobs) in enumerate(plan.items(), 1)
    ]


def shared_generations(jobs: list[Job]) -> list[list[str]]:
    """The scenarios (two or more) whose generations one engine makes once and shares
    (drive's MemoEngine): same prompts, chat template and sampling, in categories that reuse
    generations; one list per shared request, in the order the jobs run."""
    groups: dict[str, list[str]] = {}
    for res, role in jobs:
        category = categories.registry().get(res.scenario.category)
        if category is None or not category.reuses_generations:
            continue
        sampling = sampling_for(res.scenario, role).to_dict()
        key = json.dumps([res.prompts, res.scenario.chat, sampling], sort_keys=True, default=str)
        groups.setdefault(key, []).append(res.scenario.name)
    return [names for names in groups.values() if len(names) > 1]


def _dry_run_skip(where: Where, jobs: list[Job], refused: dict[Where, str], doomed: set[int]):
    if where in refused:
        return {"skipped": f"cannot run here: {refused[where]}"}
    if serves_only_doomed(jobs, doomed):
        return {"skipped": "not needed: its scenarios cannot run here"}
    return {}
