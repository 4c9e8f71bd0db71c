"""Runs scenarios: starts each distinct engine setting once, generates every scenario's samples
on it, scores them with the reference (batched, cached), and judges each scenario."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from parity import categories, engines
from parity.engines import process
from parity.engines.base import EngineError
from parity.run import faults, modelcheck, scoring, tokens
from parity.run import preflight as validate
from parity.run.enginework import Ahead, MemoEngine
from parity.run.prompts import load_prompts, render
from parity.run.results import EngineRun, RunResult, ScenarioResult
from parity.run.scenario import Scenario
from parity.run.scoring import References  # noqa: F401  (runner.References: bench, older callers)
from parity.setup import envs, models, phases
from parity.trainer.external import ScoresMissing
from parity.verdicts import core
from parity.verdicts.core import Verdict

Log = Callable[[str], None]


def _plan(results: list[ScenarioResult]) -> dict[tuple[str, str], list[tuple[ScenarioResult, str]]]:
    """(setting key, model) -> the (scenario, role) jobs one engine serves."""
    plan: dict[tuple[str, str], list[tuple[ScenarioResult, str]]] = {}
    for res in results:
        for role, setting in res.scenario.settings().items():
            plan.setdefault((setting.key(), res.model_path), []).append((res, role))
    return plan


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
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = out_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    run = RunResult(run_id=out_dir.name, results=[ScenarioResult(sc) for sc in scenarios])
    timings = run.timings
    # The harness's validator imports vLLM while the run's models and prompts are prepared.
    if preflight and any(
        s.env == "harness" and s.engine == "vllm"
        for r in run.results
        for s in r.scenario.settings().values()
    ):
        process.warm_validator(envs.python_for("harness", log), log_dir / "validate-harness.log")
    try:
        tokenizers, pythons, drifts, refused = _prepare(run, preflight, log_dir, log)
    finally:
        process.close_warm()  # unused: e.g. the run's models did not resolve

    # One engine per distinct (setting, model): start once, serve every scenario that uses it.
    plan = _plan(run.results)
    # Scenarios with an engine that cannot run here (preflight's refusals) are unresolved
    # whatever their other engines do: those are started only when another scenario needs them.
    doomed = {id(r) for where, jobs in plan.items() if where in refused for r, _ in jobs}
    if dry_run:
        run.engines = [
            {
                "n": n,
                "setting": jobs[0][0].scenario.settings()[jobs[0][1]].to_dict(),
                "model": where[1],
                "planned": True,
                "scenarios": [r.scenario.name for r, _ in jobs],
                **(
                    {"skipped": f"cannot run here: {refused[where]}"}
                    if where in refused
                    else {"skipped": "not needed: its scenarios cannot run here"}
                    if all(id(r) in doomed for r, _ in jobs)
                    else {}
                ),
            }
            for n, (where, jobs) in enumerate(plan.items(), 1)
        ]
        timings["build_s"] = phases.build_seconds() - b_run
        return run

    timings["engine_start_s"] = timings["generate_s"] = 0.0
    timings["engine_stop_s"] = 0.0
    timings["tokens_generated"] = 0
    closing: list[threading.Thread] = []
    ahead = Ahead(
        list(plan.items()),
        refused,
        doomed,
        drifts,
        pythons,
        log_dir,
        dict(start_timeout=start_timeout, request_timeout=request_timeout),
    )
    try:
        for n, ((key, model_path), jobs) in enumerate(plan.items(), 1):
            setting = jobs[0][0].scenario.settings()[jobs[0][1]]
            log_path = log_dir / f"engine-{n}-{key}.log"
            offset = ahead.offsets.get(n, faults.log_size(log_path))
            log(f"[engine {n}/{len(plan)}] starting {setting.label()} on {Path(model_path).name}")
            record = {
                "n": n,
                "setting": setting.to_dict(),
                "model": model_path,
                "log": str(log_path),
                "scenarios": [r.scenario.name for r, _ in jobs],
            }
            run.engines.append(record)
            if (key, model_path) in refused or all(id(r) in doomed for r, _ in jobs):
                why = refused.get((key, model_path))
                record["skipped"] = (
                    f"cannot run here: {why}"
                    if why
                    else "not needed: every scenario it serves needs an engine that cannot run here"
                )
                log(f"[engine {n}/{len(plan)}] not started: {record['skipped']}")
                for res, role in jobs:
                    res.runs[role] = EngineRun(
                        role,
                        setting,
                        log_path=str(log_path),
                        error=record["skipped"],
                        extra={"refused": why} if why else {},
                    )
                continue
            drift = modelcheck.drift_for(drifts, setting, model_path)
            if drift:
                record["skipped"] = "config drift: " + "; ".join(r["message"] for r in drift)
                log(f"[engine {n}/{len(plan)}] not started: {record['skipped']}")
                for res, role in jobs:
                    res.drift[role] = drift
                    res.runs[role] = EngineRun(role, setting, log_path=str(log_path))
                continue
            engine = None
            try:
                engine = ahead.take(n) or engines.create(
                    setting,
                    model_path,
                    pythons[setting.env],
                    log_path,
                    start_timeout=start_timeout,
                    request_timeout=request_timeout,
                )
                engine.start()
                ahead.preload_after(n)  # the next engine imports vLLM while this one works
                record["start_s"] = engine.start_s
                record["effective_config"] = engine.effective_config()
                timings["engine_start_s"] += engine.start_s
                log(f"[engine {n}/{len(plan)}] started in {engine.start_s:.1f}s")
                memo = MemoEngine(engine)
                for res, role in jobs:
                    er = EngineRun(
                        role,
                        setting,
                        log_path=str(log_path),
                        log_offset=offset,
                        effective_config=engine.effective_config(),
                        start_s=engine.start_s,
                    )
                    res.runs[role] = er
                    t0, b0 = time.perf_counter(), phases.build_seconds()
                    reused = memo.reused
                    category = categories.get(res.scenario.category)
                    if progress is not None:
                        engine.on_progress = lambda m, name=res.scenario.name, role=role: progress(
                            {**m, "scenario": name, "role": role}
                        )
                    try:
                        prompts = render(tokenizers[model_path], res.prompts, res.scenario.chat)
                        category.drive(
                            memo if category.reuses_generations else engine, res, role, prompts, log
                        )
                    except EngineError:
                        raise
                    except Exception as exc:  # a bug in one scenario's engine work: that
                        # scenario is unresolved, the run and its report go on
                        er.error = f"engine work failed: {faults.describe(exc)}"
                        log(f"  {res.scenario.name} [{role}]: {er.error}")
                    er.reused = memo.reused > reused
                    er.generate_s = _lap(t0, b0)  # less a perturbed checkpoint's build
                    timings["generate_s"] += er.generate_s
                    n_tok = sum(len(s.token_ids) for s in er.sequences)
                    timings["tokens_generated"] += 0 if er.reused else n_tok
                    log(
                        f"  {res.scenario.name} [{role}]: {len(er.sequences)} sequences, "
                        f"{n_tok} tokens in {er.generate_s:.1f}s"
                        + (" (reused: same prompts and sampling)" if er.reused else "")
                    )
            except Exception as exc:  # EngineError, or a harness bug around this engine
                internal = not isinstance(exc, EngineError)
                why = faults.internal_error(exc) if internal else str(exc)
                if internal:  # the run is incomplete: exit 125, whatever the other verdicts
                    run.interrupted = run.interrupted or why
                record["error"] = why
                log(f"[engine {n}/{len(plan)}] FAILED: {why}")
                for res, role in jobs:
                    er = res.runs.setdefault(
                        role, EngineRun(role, setting, log_offset=offset, log_path=str(log_path))
                    )
                    if not er.sequences:
                        er.error = why
            finally:
                if engine is not None:  # stopped while the next engine starts (joined below)
                    record["worker_pgid"] = engine.pgid
                    closing.append(threading.Thread(target=engine.close, daemon=True))
                    closing[-1].start()
    except KeyboardInterrupt as exc:
        ahead.close()
        run.interrupted = str(exc) or "interrupted by the user"
        log("interrupted: engines stopped; reporting what finished")
    except Exception as exc:  # a harness bug between engines: judge what finished
        ahead.close()
        run.interrupted = faults.internal_error(exc)
        log(f"{run.interrupted}: engines stopped; reporting what finished")
    ahead.close()
    if run.interrupted:
        faults.mark_unfinished(run.results, run.interrupted)
    if export is not None:
        tokens.export(run, export, log)

    # Verdicts: each category scores through the shared reference models (one load per
    # checkpoint, head dtype, tie rule and device; batched forwards; cached scores), or a
    # scenario's scores file.
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
        timings["judge_s"] = _lap(t0, b0) - timings["score_s"]
        refs.close()
        t_stop = time.perf_counter()  # engine_stop_s: the stopping not hidden behind other work
        for thread in closing:
            thread.join()
        timings["engine_stop_s"] = time.perf_counter() - t_stop
    tokens.record(run, out_dir, log)
    timings["total_s"] = time.perf_counter() - t_run
    timings["build_s"] = phases.build_seconds() - b_run
    timings["harness_overhead_s"] = timings["total_s"] - sum(
        timings.get(k, 0.0) for k in ("engine_start_s", "generate_s", "score_s", "build_s")
    )
    return run


def _prepare(run: RunResult, preflight: bool, log_dir: Path, log: Log):
    """Models, tokenizers and prompts (all in the harness, so every engine gets identical
    tokens), then the checks in the engines' environments (`preflight`): (tokenizers, env
    interpreters, config drifts, refused settings). Times prepare_s and validate_s."""

    timings = run.timings
    # Every phase's seconds leave out the builds in it (build_s: models, checkpoints, envs).
    t0, b0 = time.perf_counter(), phases.build_seconds()
    from transformers import AutoTokenizer  # lazy: transformers imports torch

    tokenizers = {}
    for res in run.results:
        model_path = str(models.resolve_model(res.scenario.model))
        res.model_path = model_path
        if model_path not in tokenizers:
            tokenizers[model_path] = AutoTokenizer.from_pretrained(model_path)
            run.models[model_path] = {
                "name": res.scenario.model,
                "fingerprint": models.fingerprint(model_path),
            }
        sc = res.scenario
        res.prompts = load_prompts(sc.prompt_source, sc.prompt_items, sc.prompt_seed)
    timings["prepare_s"] = _lap(t0, b0)

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
    timings["validate_s"] = _lap(t0, b0)
    return tokenizers, pythons, drifts, refused


def _lap(t0: float, b0: float) -> float:
    """Seconds since perf_counter() read t0, less the build time since build_seconds() read b0."""
    return time.perf_counter() - t0 - (phases.build_seconds() - b0)


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
