"""Scenario files (scenarios/*.toml) and engine profiles: parsing, full validation before any
engine starts (every problem reported at once), and the precedence of settings.

Precedence, one rule everywhere: command line > environment variable > scenario file > defaults.
Each effective value records where it came from (`Scenario.provenance`). The fields' checks:
parity.run.scenario_steps (one step per group of fields) and parity.run.scenario_fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.engines.base import EngineSetting, SamplingSpec
from parity.engines.settings import Profile, load_profiles, make_setting  # noqa: F401
from parity.run import scenario_fields as fields
from parity.run import scenario_steps as steps
from parity.run.scenario_fields import DEFAULT_MIN_TOKENS, Overrides, Problem
from parity.setup import inputs
from parity.verdicts.formulas import ClipRange


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
    # expect = "report": finding name -> outer bound; a failure beyond it is not as expected.
    report_within: dict[str, float] = field(default_factory=dict)
    reward: str | None = None
    min_tokens: int = DEFAULT_MIN_TOKENS
    provenance: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # the category's own fields, parsed
    engine_sampling: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> overrides
    reference_device: str = (
        "auto"  # where the HF reference runs (parity.trainer.chunked.resolve_device)
    )
    scores: Path | None = None  # trainer scores file standing in for the HF reference
    reference_scorer: str = "hf"  # the trainer-side scorer (parity.trainer registry)
    # What the trainer's logprob is (parity.trainer.semantics): "tempered", "processed", "raw";
    # trainer: the --trainer preset that set it (None: the file or the default).
    semantics: str = "tempered"
    trainer: str | None = None
    gates: list[str] = field(default_factory=list)  # frameworks whose gates are findings

    def settings(self) -> dict[str, EngineSetting]:
        out = {"candidate": self.candidate}
        if self.baseline is not None:
            out["baseline"] = self.baseline
        return out


def parse_scenario(
    path: Path,
    overrides: Overrides | None = None,
    profiles: dict[str, Profile] | None = None,
) -> tuple[Scenario | None, list[tuple[str, str, str]]]:
    """Parse and validate one scenario file; returns (scenario or None, problems). Each step
    checks a group of fields (parity.run.scenario_steps) and adds its problems to the list."""

    overrides = overrides or Overrides()
    profiles = profiles or load_profiles()
    problems: list[Problem] = []
    p = str(path)
    data, why = inputs.read_toml(Path(path))
    if data is None:
        return None, [(p, "(file)", why)]
    category = steps.category(data, p, problems)
    steps.unknown_fields(data, category, p, problems)
    provenance: dict[str, str] = {}
    model = steps.model(data, overrides.model, provenance, p, problems)
    expect, expect_diagnosis = steps.expectation(data, category, p, problems)
    within = steps.report_within(data, category, expect, p, problems)
    prompts = steps.prompts(data, p, problems)
    sampling = steps.sampling(data, p, problems)
    options, roles = steps.category_fields(category, data, sampling, p, problems)
    engine_sampling = steps.engine_sampling(data, sampling, p, problems)
    candidate, baseline = steps.engine_settings(
        data, roles, overrides, profiles, provenance, p, problems
    )
    judging = steps.judging(
        data,
        category,
        sampling,
        overrides.reference_device,
        provenance,
        p,
        problems,
        overrides.trainer,
    )
    reward = steps.reward(data, prompts["prompt_source"], p, problems)
    min_tokens = steps.min_tokens(data, p, problems)
    name, description = steps.names(data, Path(path).stem, p, problems)
    gates = fields.gates(data, p, problems)
    if problems:
        return None, problems
    scenario = Scenario(
        path=Path(path),
        name=name,
        category=data["category"],
        description=description,
        model=model,
        sampling=sampling,
        candidate=candidate,
        baseline=baseline,
        expect=expect,
        expect_diagnosis=expect_diagnosis,
        report_within=within,
        reward=reward,
        min_tokens=min_tokens,
        provenance=provenance,
        options=options,
        engine_sampling=engine_sampling,
        gates=gates,
        **prompts,
        **judging,
    )
    found = steps.settled(scenario, category, options, p)
    return (None, found) if found else (scenario, [])


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
