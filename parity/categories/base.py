"""The Category interface: what a fix category declares (its scenario fields, defaults,
diagnoses and finding kinds) and does (drive engines, judge), plus the shared pieces."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from parity.verdicts.core import Verdict

Problem = tuple[str, str, str]  # (file, field, message with the fix)
Log = Callable[[str], None]


class Category:
    """One fix category. Subclass it in a module of parity.categories and set CATEGORY there.

    Attributes:
        name: the `category = "..."` of scenario files.
        summary: one line for the docs and --help.
        fields: category-specific top-level scenario fields -> one line of help each.
        tolerances: default tolerances (name -> value) a scenario's [tolerances] may override.
        margins: default baseline-vs-candidate margins a scenario's [margins] may override.
        diagnoses: every diagnosis code the category can give -> the fix it names.
        findings: every finding name the category can build -> its kind (parity.verdicts.core.KINDS);
            a name ending in "*" stands for a family (e.g. "identity.*").
        key_metric_name: the number tables and bisect trials show for a scenario.
        reuses_generations: whether the engine work may be served from an identical request of
            another scenario in the run (True when it is plain generation; False for probes
            that repeat requests or change engine state on purpose).
        scores_columns: the columns of a `[reference] scores` file (parity.trainer.external) its judging
            reads -> why; None when it cannot be judged from a scores file, because its judging
            scores something an export does not hold (scores_refusal says what).
    """

    name: str = ""
    summary: str = ""
    fields: dict[str, str] = {}
    tolerances: dict[str, float] = {}
    margins: dict[str, float] = {}
    diagnoses: dict[str, str] = {}
    findings: dict[str, str] = {}
    key_metric_name: str = ""
    reuses_generations: bool = True
    scores_columns: dict[str, str] | None = None
    scores_refusal: str = "its judging does not read trainer logprobs of the sampled tokens"

    def parse(
        self,
        data: dict[str, Any],
        sampling,
        path: str,
    ) -> tuple[dict[str, Any], list[Problem]]:
        """Validate the category's own fields of one scenario file.

        Args:
            data: the whole parsed TOML table.
            sampling: the scenario's validated SamplingSpec.
            path: the file, for problem messages.
        Returns:
            (options, problems): options land in Scenario.options; every problem found.
        """
        return {}, []

    def roles(self, options: dict[str, Any]) -> tuple[str, ...]:
        """The engine roles a scenario needs: ("candidate",) or ("candidate", "baseline")."""
        return ("candidate",)

    def check_settings(self, scenario, path: str) -> list[Problem]:
        """Problems only visible once the engine settings are known (before any start)."""
        return []

    def served_refusal(self, options: dict[str, Any]) -> str | None:
        """Why a scenario with these options cannot run on a served engine (engine "openai":
        generation, prompt logprobs and what the server exposes, nothing else), or None when
        its engine work is only that. Default: None (one generate call)."""
        return None

    def drive(self, engine, res, role: str, prompts: list[list[int]], log: Log) -> None:
        """Do the engine work of one role and fill res.runs[role] (sequences, extra).
        Default: one generate call with the scenario's sampling for that role."""
        res.runs[role].sequences = engine.generate(prompts, sampling_for(res.scenario, role))

    def judge(self, res, refs) -> tuple[Verdict, dict[str, Any]]:
        """The scenario's verdict and detail (metrics), from res.runs and the reference models
        (refs.get(model_path, head_dtype).score(pairs, sampling))."""
        raise NotImplementedError

    def key_metric(self, detail: dict[str, Any]) -> tuple[float | None, str]:
        """(value, text) of the scenario's key metric for tables and bisect."""
        value = detail.get("key_metric") if detail else None
        return (
            value if isinstance(value, (int, float)) else None,
            (detail or {}).get("headline", "n/a"),
        )


def choice(
    data: dict[str, Any],
    key: str,
    choices,
    default,
    path: str,
    problems: list[Problem],
    hint: str = "",
    fld: str | None = None,
) -> Any:
    """data[key] (default when absent), which must be one of `choices`; else a problem naming
    them (reported under `fld`, default `key`)."""
    value = data.get(key, default)
    if not any(value == c and type(value) is type(c) for c in choices):
        problems.append(
            (
                path,
                fld or key,
                f"{value!r}: {hint}use one of " + ", ".join(f'"{c}"' for c in choices),
            )
        )
    return value


def sampling_for(scenario, role: str):
    """The sampling parameters sent to one role's engine: the scenario's, with the role's
    `sampling` overrides (an engine configured to sample otherwise than the trainer assumes)."""
    overrides = (scenario.engine_sampling or {}).get(role)
    return replace(scenario.sampling, **overrides) if overrides else scenario.sampling
