"""Drives a run's planned engines one after the other: each is started (or recorded as not
started), serves its (scenario, role) jobs, has its failure recorded, and is closed in the
background while the next one starts."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from parity import categories, engines
from parity.engines.base import EngineError, EngineSetting
from parity.run import engineplan, faults, modelcheck
from parity.run.engineplan import Job, Plan, Where
from parity.run.enginework import Ahead, MemoEngine
from parity.run.prompts import render
from parity.run.results import EngineRun, RunResult, ScenarioResult
from parity.setup import phases

Log = Callable[[str], None]


@dataclass
class Engines:
    """What driving the engines takes from the run's preparation, and what it leaves: the
    threads still closing engines (joined once the run is judged)."""

    run: RunResult
    tokenizers: dict[str, Any]  # model path -> tokenizer
    pythons: dict[str, str]  # env -> interpreter
    drifts: dict
    refused: dict[Where, str]
    doomed: set[int]
    log_dir: Path
    log: Log
    progress: Callable[[dict], None] | None
    start_timeout: float
    request_timeout: float
    ahead: Ahead | None = None
    closing: list[threading.Thread] = field(default_factory=list)


@dataclass
class Turn:
    """One engine's turn in the plan: its number, its jobs, its log and its run.engines record."""

    n: int
    of: int  # engines in the plan
    where: Where
    jobs: list[Job]
    setting: EngineSetting
    log_path: Path
    offset: int  # where this run's part of the engine log starts
    record: dict[str, Any]

    @property
    def model_path(self) -> str:
        return self.where[1]

    def say(self, message: str) -> str:
        return f"[engine {self.n}/{self.of}] {message}"


def drive_engines(ctx: Engines, plan: Plan) -> list[threading.Thread]:
    """Every planned engine in turn, the next one preloaded while the current one works. An
    interrupt, or a harness bug between engines, ends the loop (run.interrupted says why) and
    marks the unfinished jobs; returns the threads still closing engines."""
    timings = ctx.run.timings
    timings["engine_start_s"] = timings["generate_s"] = 0.0
    timings["engine_stop_s"] = 0.0
    timings["tokens_generated"] = 0
    ctx.ahead = Ahead(
        list(plan.items()),
        ctx.refused,
        ctx.doomed,
        ctx.drifts,
        ctx.pythons,
        ctx.log_dir,
        dict(start_timeout=ctx.start_timeout, request_timeout=ctx.request_timeout),
    )
    try:
        for n, (where, jobs) in enumerate(plan.items(), 1):
            drive_engine(ctx, engine_turn(ctx, n, len(plan), where, jobs))
    except KeyboardInterrupt as exc:
        ctx.ahead.close()
        ctx.run.interrupted = str(exc) or "interrupted by the user"
        ctx.log("interrupted: engines stopped; reporting what finished")
    except Exception as exc:  # a harness bug between engines: judge what finished
        ctx.ahead.close()
        ctx.run.interrupted = faults.internal_error(exc)
        ctx.log(f"{ctx.run.interrupted}: engines stopped; reporting what finished")
    ctx.ahead.close()
    if ctx.run.interrupted:
        faults.mark_unfinished(ctx.run.results, ctx.run.interrupted)
    return ctx.closing


def engine_turn(ctx: Engines, n: int, of: int, where: Where, jobs: list[Job]) -> Turn:
    """Engine n's turn: its setting, its log (appended to: the offset of this run's part, read
    before the preloaded worker wrote to it) and its run.engines record."""
    setting = engineplan.setting_of(jobs)
    log_path = ctx.log_dir / f"engine-{n}-{where[0]}.log"
    offset = ctx.ahead.offsets.get(n, faults.log_size(log_path))
    record = {
        "n": n,
        "setting": setting.to_dict(),
        "model": where[1],
        "log": str(log_path),
        "scenarios": [r.scenario.name for r, _ in jobs],
    }
    return Turn(n, of, where, jobs, setting, log_path, offset, record)


def drive_engine(ctx: Engines, t: Turn) -> None:
    """One engine: started unless it need not or cannot be, then every job it serves. A failed
    engine fails its jobs; the engine is closed in the background whatever happened."""
    ctx.log(t.say(f"starting {t.setting.label()} on {Path(t.model_path).name}"))
    ctx.run.engines.append(t.record)
    if not_started(ctx, t):
        return
    engine = None
    try:
        engine = ctx.ahead.take(t.n) or engines.create(
            t.setting,
            t.model_path,
            ctx.pythons[t.setting.env],
            t.log_path,
            start_timeout=ctx.start_timeout,
            request_timeout=ctx.request_timeout,
        )
        start(ctx, t, engine)
        memo = MemoEngine(engine)
        for res, role in t.jobs:
            serve(ctx, t, engine, memo, res, role)
    except Exception as exc:  # EngineError, or a harness bug around this engine
        failed(ctx, t, exc)
    finally:
        if engine is not None:  # stopped while the next engine starts (joined after judging)
            close_later(ctx, t, engine)


def not_started(ctx: Engines, t: Turn) -> bool:
    """Whether the engine is left unstarted: refused here, needed only by scenarios that cannot
    run here, or its environment would read the checkpoint differently (config drift). Each job
    then gets an EngineRun saying so."""
    if t.where in ctx.refused or engineplan.serves_only_doomed(t.jobs, ctx.doomed):
        why = ctx.refused.get(t.where)
        t.record["skipped"] = (
            f"cannot run here: {why}"
            if why
            else "not needed: every scenario it serves needs an engine that cannot run here"
        )
        ctx.log(t.say(f"not started: {t.record['skipped']}"))
        for res, role in t.jobs:
            res.runs[role] = EngineRun(
                role,
                t.setting,
                log_path=str(t.log_path),
                error=t.record["skipped"],
                extra={"refused": why} if why else {},
            )
        return True
    drift = modelcheck.drift_for(ctx.drifts, t.setting, t.model_path)
    if drift:
        t.record["skipped"] = "config drift: " + "; ".join(r["message"] for r in drift)
        ctx.log(t.say(f"not started: {t.record['skipped']}"))
        for res, role in t.jobs:
            res.drift[role] = drift
            res.runs[role] = EngineRun(role, t.setting, log_path=str(t.log_path))
        return True
    return False


def start(ctx: Engines, t: Turn, engine) -> None:
    """Start the engine, then preload the next one; its start time and effective config go to
    its record and the run's timings."""
    engine.start()
    ctx.ahead.preload_after(t.n)  # the next engine imports vLLM while this one works
    t.record["start_s"] = engine.start_s
    t.record["effective_config"] = engine.effective_config()
    ctx.run.timings["engine_start_s"] += engine.start_s
    ctx.log(t.say(f"started in {engine.start_s:.1f}s"))


def serve(ctx: Engines, t: Turn, engine, memo: MemoEngine, res: ScenarioResult, role: str):
    """One (scenario, role) job on a started engine: the category's engine work (through the
    memo when the category reuses generations), timed without the builds in it. A bug in that
    work fails this job only; an EngineError fails the engine."""
    er = EngineRun(
        role,
        t.setting,
        log_path=str(t.log_path),
        log_offset=t.offset,
        effective_config=engine.effective_config(),
        start_s=engine.start_s,
    )
    res.runs[role] = er
    t0, b0 = time.perf_counter(), phases.build_seconds()
    reused = memo.reused
    category = categories.get(res.scenario.category)
    if ctx.progress is not None:
        progress = ctx.progress
        engine.on_progress = lambda m, name=res.scenario.name, role=role: progress(
            {**m, "scenario": name, "role": role}
        )
    try:
        prompts = render(ctx.tokenizers[t.model_path], res.prompts, res.scenario.chat)
        category.drive(memo if category.reuses_generations else engine, res, role, prompts, ctx.log)
    except EngineError:
        raise
    except Exception as exc:  # a bug in one scenario's engine work: that
        # scenario is unresolved, the run and its report go on
        er.error = f"engine work failed: {faults.describe(exc)}"
        ctx.log(f"  {res.scenario.name} [{role}]: {er.error}")
    er.reused = memo.reused > reused
    er.generate_s = phases.lap(t0, b0)  # less a perturbed checkpoint's build
    ctx.run.timings["generate_s"] += er.generate_s
    n_tok = sum(len(s.token_ids) for s in er.sequences)
    ctx.run.timings["tokens_generated"] += 0 if er.reused else n_tok
    ctx.log(
        f"  {res.scenario.name} [{role}]: {len(er.sequences)} sequences, "
        f"{n_tok} tokens in {er.generate_s:.1f}s"
        + (" (reused: same prompts and sampling)" if er.reused else "")
    )


def failed(ctx: Engines, t: Turn, exc: Exception) -> None:
    """An engine that failed (EngineError) or a harness bug around it: its jobs without
    sequences carry the reason; a harness bug also leaves the run incomplete (exit 125,
    whatever the other verdicts)."""
    internal = not isinstance(exc, EngineError)
    why = faults.internal_error(exc) if internal else str(exc)
    if internal:
        ctx.run.interrupted = ctx.run.interrupted or why
    t.record["error"] = why
    ctx.log(t.say(f"FAILED: {why}"))
    for res, role in t.jobs:
        er = res.runs.setdefault(
            role, EngineRun(role, t.setting, log_offset=t.offset, log_path=str(t.log_path))
        )
        if not er.sequences:
            er.error = why


def close_later(ctx: Engines, t: Turn, engine) -> None:
    """Close the engine in a thread of its own, so it stops while the next engine starts."""
    t.record["worker_pgid"] = engine.pgid
    ctx.closing.append(threading.Thread(target=engine.close, daemon=True))
    ctx.closing[-1].start()
