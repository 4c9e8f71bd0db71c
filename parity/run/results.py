"""What a run produces, scenario by scenario and engine role by engine role: the records the
runner fills in, categories judge, and reports render."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.engines.base import EngineSetting, Sequence
from parity.run.prompts import REWARDS, Prompt
from parity.run.scenario import Scenario
from parity.verdicts import core
from parity.verdicts.core import Verdict


@dataclass
class EngineRun:
    """One engine role (candidate or baseline) of one scenario."""

    role: str
    setting: EngineSetting
    sequences: list[Sequence] = field(default_factory=list)
    effective_config: dict[str, Any] | None = None
    start_s: float | None = None
    generate_s: float | None = None
    error: str | None = None
    log_path: str | None = None
    log_offset: int = 0  # where this run's part of an appended engine log starts
    extra: dict[str, Any] = field(default_factory=dict)  # category-specific engine data
    reused: bool = False  # sequences taken from an earlier identical request on this engine


@dataclass
class ScenarioResult:
    scenario: Scenario
    model_path: str = ""
    prompts: list[Prompt] = field(default_factory=list)
    runs: dict[str, EngineRun] = field(default_factory=dict)
    verdict: Verdict | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    score_s: float = 0.0
    check_s: float = 0.0
    drift: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # role -> drift rows
    # What the reference scored while judging (scoring.Recorded): (temperature, top_p, top_k,
    # prompt ids, completion ids) -> [(head dtype, tie rule, RefScore)], for tokens.parquet.
    ref_scores: dict[tuple, list] = field(default_factory=dict)

    @property
    def as_expected(self) -> bool:
        return self.verdict is not None and core.expected(
            self.verdict,
            self.scenario.expect,
            self.scenario.expect_diagnosis,
            self.scenario.report_within,
        )

    def rewards(self, seqs: list[Sequence]) -> list[float] | None:
        """Per-sequence reward, or None when the scenario has no reward function."""
        if not self.scenario.reward:
            return None
        fn = REWARDS[self.scenario.reward]
        values = [fn(self.prompts[s.prompt_index], s.text) for s in seqs]
        return None if any(v is None for v in values) else values


@dataclass
class RunResult:
    run_id: str
    results: list[ScenarioResult]
    timings: dict[str, float] = field(default_factory=dict)
    engines: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    interrupted: str | None = None
    reference_stats: dict[str, dict] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)  # tokens.parquet: file and rows
    export: dict[str, Any] | None = None  # --export-sequences: file and row count
    # Set once the reports are written (parity.api.write_reports):
    exit_code: int | None = None  # 0 as expected, 1 divergence, 125 unresolved
    out_dir: Path | None = None  # the report directory
    report: dict[str, Any] | None = None  # report.json's data
