"""Runs scenarios: starts each distinct engine setting once, generates every scenario's samples
on it, scores them with the reference (batched, cached), and judges each scenario. run() is the
pipeline; its steps: prepare, plan (parity.run.engineplan), drive (parity.run.drive), judge, time."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from parity import categories
from parity.engines import engine_checks
from parity.run import drive, engineplan, faults, modelcheck, scoring, tokens
from parity.run import preflight as validate
from parity.run.prompts import load_prompts
from parity.run.results import EngineRun, RunResult, ScenarioResult  # noqa: F401  (runner.EngineRun)
from parity.run.scenario import Scenario
from parity.run.scoring import References  # noqa: F401  (runner.References: bench, older callers)
from parity.setup import envs, models, phases
from parity.trainer.external import ScoresMissing
from parity.verdicts import core
from parity.verdicts.core import Verdict

Log = Callable[[str], None]


def run(
    scenarios: list[Scenario],
    out_dir: Path,
    log: Log = print,
    start_timeout: float = 600.0,
    request_timeout: float = 1800.0,
    dry_run: bool = False,
    export: Path | None = None,
    progress: Callable[[dict], None] | None = None,
    preflight: bool = True,
) -> RunResult:
    """Run scenarios end to end. Engine failures make the affected scenarios "unresolved";
    an interrupt, or a harness bug outside one scenario's work, keeps what finished
    (RunResult.interrupted says why) and the rest of the run is still judged. `dry_run`:
    build models and environments, validate everything, plan the engines (run.engines) and
    return before any engine starts. `export`: write the sequences the reference would score
    to this file (parity.run.tokens.export) and judge nothing (no reference runs). Every run that
    starts engines writes tokens.parquet (parity.run.tokens) into out_dir. `progress` gets the
    engines' progress messages during generation, with "scenario" and "role" added.
    `preflight=False` skips the checks in the engines' environments (bisect trials: mixes of
    two settings checked before trial 1, so a mix the engine refuses fails at its start).

    Raises:
        ScenarioError: an engine argument or a request the engine would refuse (exit 2).
    """

    t_run, b_run = time.perf_counter(), phases.build_seconds()
    log_dir = _log_dir(out_dir)
    run = RunResult(run_id=out_dir.name, results=[ScenarioResult(sc) for sc in scenarios])
    _warm_validator(run, preflight, log_dir, log)
    try:
        tokenizers, pythons, drifts, refused = _prepare(run, preflight, log_dir, log)
    finally:
        engine_checks.close_warm()  # unused: e.g. the run's models did not resolve
    plan = engineplan.plan_engines(run.results)
    doomed = engineplan.doomed_scenarios(plan, refused)
    if dry_run:
        run.engines = engineplan.dry_run_records(plan, refused, doomed)
        run.timings["build_s"] = phases.build_seconds() - b_run
        return run
    ctx = drive.Engines(
        run=run,
        tokenizers=tokenizers,
        pythons=pythons,
        drifts=drifts,
        refused=refused,
        doomed=doomed,
        log_dir=log_dir,
        log=log,
        progress=progress,
        start_timeout=start_timeout,
        request_timeout=request_timeout,
    )
    closing = drive.drive_engines(ctx, plan)
    if export is not None:
        tokens.export(run, export, log)
    _judge_all(run, log, closing)
    tokens.record(run, out_dir, log)
    _time(run.timings, t_run, b_run)
    return run


def _log_dir(out_dir: Path) -> Path:
    """out_dir/logs (the engines' and validators' logs), made with out_dir when missing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = out_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    return log_dir


def _warm_validator(run: RunResult, preflight: bool, log_dir: Path, log: Log) -> None:
    """Every vLLM environment's validator imports vLLM while the run's models and prompts are
    prepared, all at once (building an environment that is missing first); each is closed by the
    caller when preparing never used it."""
    if not preflight:
        return
    names = sorted(
        {s.env for r in run.results for s in r.scenario.settings().values() if s.engine == "vllm"}
    )
    for env in names:
        engine_checks.warm_validator(envs.python_for(env, log), log_dir / f"validate-{env}.log")


def _prepare(run: RunResult, preflight: bool, log_dir: Path, log: Log):
    """Models, tokenizers and prompts (all in the harness, so every engine gets identical
    tokens), then the checks in the engines' environments (`preflight`): (tokenizers, env
    interpreters, config drifts, refused settings). Times prepare_s and validate_s."""

    timings = run.timings
    # Every phase's seconds leave out the builds in it (build_s: models, checkpoints, envs).
    t0, b0 = time.perf_counter(), phases.build_seconds()
    for res in run.results:
        res.model_path = str(models.resolve_model(res.scenario.model))
    if preflight:  # a validator with nothing to answer stops before the tokenizers load
        validate.release_validators(run.results, log)
    from transformers import AutoTokenizer  # lazy: transformers imports torch

    tokenizers = {}
    for res in run.results:
        model_path = res.model_path
        if model_path not in tokenizers:
            tokenizers[model_path] = AutoTokenizer.from_pretrained(model_path)
            run.models[model_path] = {
                "name": res.scenario.model,
                "fingerprint": models.fingerprint(model_path),
            }
        sc = res.scenario
        res.prompts = load_prompts(sc.prompt_source, sc.prompt_items, sc.prompt_seed)
    timings["prepare_s"] = phases.lap(t0, b0)

    # Engine environments, engine arguments and request limits, before any engine starts.
    t0, b0 = time.perf_counter(), phases.build_seconds()

    if preflight:
        pythons, drifts, refused = validate.preflight(run.results, tokenizers, log_dir, log)
    else:
        pythons = {
            s.env: envs.python_for(s.env, log)
            for r in run.results
            for s in r.scenario.settings().values()
        }
        drifts, refused = {}, {}
    timings["validate_s"] = phases.lap(t0, b0)
    return tokenizers, pythons, drifts, refused


def _judge_all(run: RunResult, log: Log, closing: list[threading.Thread]) -> None:
    """Every scenario's verdict. Each category scores through the shared reference models (one
    load per checkpoint, head dtype, tie rule and device; batched forwards; cached scores), or a
    scenario's scores file. An interrupt, or a harness bug outside one scenario's judging, keeps
    the verdicts reached. Times score_s and judge_s, then waits for the engines still closing
    (engine_stop_s: the stopping not hidden behind other work)."""
    timings = run.timings
    t0, b0 = time.perf_counter(), phases.build_seconds()
    refs = References(log)
    try:
        for res in run.results:
            t1, s1 = time.perf_counter(), refs.seconds()
            res.verdict, res.detail = judge(res, refs, run.export)
            res.score_s = refs.seconds() - s1
            res.check_s = time.perf_counter() - t1 - res.score_s
    except KeyboardInterrupt as exc:
        run.interrupted = str(exc) or "interrupted by the user"
        log("interrupted while judging: reporting the verdicts reached")
    except Exception as exc:  # a harness bug outside any one scenario's judging
        run.interrupted = faults.internal_error(exc)
        log(f"{run.interrupted}: reporting the verdicts reached")
    finally:
        run.reference_stats = refs.stats()
        timings["score_s"] = refs.seconds()
        timings["judge_s"] = phases.lap(t0, b0) - timings["score_s"]
        refs.close()
        t_stop = time.perf_counter()
        for thread in closing:
            thread.join()
        timings["engine_stop_s"] = time.perf_counter() - t_stop


def judge(
    res: ScenarioResult,
    refs: References,
    export: dict[str, Any] | None = None,
) -> tuple[Verdict, dict[str, Any]]:
    """The scenario's verdict: unresolved when an engine it needs failed, or when its sequences
    were exported instead (`export`: RunResult.export); else its category's judgement plus the
    model-identity findings (every engine must run the model the trainer loads, and both
    engines of a pair the same one); inconclusive when its scores file lacks sequences. A
    judging error is unresolved for this scenario only."""

    if res.drift:
        return modelcheck.drift_verdict(res), {"drift": res.drift}
    failed = faults.engine_verdict(res)
    if failed is not None:
        return failed, {}
    if export is not None:
        return scoring.exported_verdict(res, export), {}
    try:
        with refs.judging(res):
            verdict, detail = categories.get(res.scenario.category).judge(res, refs)
        modelcheck.add_identity(res, verdict, detail)
        _add_reward(res, detail)
    except ScoresMissing as exc:
        return scoring.missing_verdict(res, exc), {}
    except Exception as exc:  # a bug or bad data in judging must not lose the other verdicts
        return core.unresolved("judge_error", f"judging failed: {faults.describe(exc)}"), {}
    return verdict, detail


def _add_reward(res: ScenarioResult, detail: dict[str, Any]) -> None:
    """Mean reward per engine role, when the scenario names a reward function."""
    for role, er in res.runs.items():
        values = res.rewards(er.sequences)
        if values:
            detail.setdefault("reward", {})[role] = {
                "mean": sum(values) / len(values),
                "n": len(values),
            }


def _time(timings: dict[str, float], t_run: float, b_run: float) -> None:
    """The whole run's total_s and build_s (t_run, b_run: read as it began), and the harness
    overhead: the total less engine start, generation, scoring and builds."""
    timings["total_s"] = time.perf_counter() - t_run
    timings["build_s"] = phases.build_seconds() - b_run
    timings["harness_overhead_s"] = timings["total_s"] - sum(
        timings.get(k, 0.0) for k in ("engine_start_s", "generate_s", "score_s", "build_s")
    )


def new_run_dir(
    output: Path | None, results_root: Path = Path("results"), prefix: str = ""
) -> Path:
    """results/<prefix><run-id>/ (a UTC timestamp, suffixed when it exists), or the --output
    directory as given."""
    if output is not None:
        return output
    stamp = prefix + time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = results_root / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = results_root / f"{stamp}-{suffix}"
    return path
