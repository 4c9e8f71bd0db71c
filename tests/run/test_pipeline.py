"""The steps of runner.run in isolation: the engine plan (parity.run.engineplan), driving each
engine (parity.run.drive), and the runner's own prepare, judge and time steps. Engines are
recording fakes made by a patched engines.create; the category is fault_fakes' FakeCategory."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
from fault_fakes import FakeCategory, fake_render, install_fakes, quiet, scenario, write_shim

from parity import categories, engines
from parity.engines import engine_checks
from parity.engines.base import EngineError, EngineSetting, Sequence
from parity.run import drive, engineplan, runner
from parity.run.prompts import load_prompts
from parity.run.results import EngineRun, RunResult, ScenarioResult
from parity.setup import envs, phases
from parity.verdicts.core import Verdict

MODEL = "/fake/fake-model"
FAILS: dict[tuple[str, int], BaseException] = {}  # ("start" | "create", x) -> what it raises


class Engine:
    """A fake engine that appends what happens to it to a shared list of events."""

    pgid = None
    start_s = 0.5

    def __init__(self, events, setting, fail_start=None, fail_create=None):
        if fail_create is not None:
            raise fail_create
        self.events, self.name, self.fail_start = events, setting.args.get("x", 0), fail_start
        self.on_progress = None
        events.append(("create", self.name))

    def start(self) -> None:
        self.events.append(("start", self.name))
        if self.fail_start is not None:
            raise self.fail_start

    def effective_config(self) -> dict:
        return {"engine": self.name}

    def generate(self, prompts, sampling) -> list[Sequence]:
        self.events.append(("generate", self.name))
        if self.on_progress is not None:
            self.on_progress({"done": 1, "total": len(prompts)})
        return [Sequence(i, 0, p, [5, 6], [-0.5, -0.25], text="ok") for i, p in enumerate(prompts)]

    def close(self) -> None:
        self.events.append(("close", self.name))


class PreloadingEngine(Engine):
    def preload(self) -> None:
        self.events.append(("preload", self.name))


class InterruptingCategory(FakeCategory):
    """Engine work interrupted (SIGINT) while the scenario named "stop" generates."""

    def drive(self, engine, res, role, prompts, log):
        if res.scenario.name == "stop":
            raise KeyboardInterrupt
        super().drive(engine, res, role, prompts, log)


class NoAhead:
    """Ahead with nothing preloaded and nothing to preload."""

    def __init__(self, offsets=None):
        self.offsets = offsets or {}

    def take(self, n):
        return None

    def preload_after(self, n) -> None:
        pass


@pytest.fixture
def events(monkeypatch):
    """engines.create makes recording engines; their events, in order."""
    seen: list[tuple[str, object]] = []
    kinds = {"fake": Engine, "preload": PreloadingEngine}

    def create(setting, model_path, python, log_path, **kwargs):
        assert kwargs == {"start_timeout": 60.0, "request_timeout": 120.0}
        return kinds[setting.engine](
            seen,
            setting,
            fail_start=FAILS.get(("start", setting.args.get("x", 0))),
            fail_create=FAILS.get(("create", setting.args.get("x", 0))),
        )

    monkeypatch.setattr(engines, "create", create)
    # Registered as built-in kinds (engines.create above makes them): config drift is checked
    # for built-in kinds only (plugin engines read no model config of their own).
    for kind in kinds:
        monkeypatch.setitem(engines.ENGINES, kind, f"{__name__}:Engine")
    monkeypatch.setattr(drive, "render", fake_render)
    monkeypatch.setitem(categories.registry(), "fake", FakeCategory())
    FAILS.clear()
    yield seen
    FAILS.clear()


def prepared(*scenarios) -> list[ScenarioResult]:
    """ScenarioResults as _prepare leaves them: model path and prompts set."""
    out = []
    for sc in scenarios:
        res = ScenarioResult(sc, model_path=MODEL)
        res.prompts = load_prompts(sc.prompt_source, sc.prompt_items, sc.prompt_seed)
        out.append(res)
    return out


def context(tmp_path: Path, results, refused=None, drifts=None, lines=None, progress=None):
    """drive.Engines for prepared results (plan, doomed from the refusals), plus the plan."""
    plan = engineplan.plan_engines(results)
    refused = refused or {}
    (tmp_path / "logs").mkdir(exist_ok=True)
    ctx = drive.Engines(
        run=RunResult("test", results),
        tokenizers={MODEL: None},
        pythons={"harness": "python"},
        drifts=drifts or {},
        refused=refused,
        doomed=engineplan.doomed_scenarios(plan, refused),
        log_dir=tmp_path / "logs",
        log=(lines if lines is not None else []).append,
        progress=progress,
        start_timeout=60.0,
        request_timeout=120.0,
    )
    return ctx, plan


def with_baseline(sc, **args):
    return dataclasses.replace(sc, baseline=EngineSetting.make("fake", "harness", args))


def key(**args) -> str:
    return EngineSetting.make("fake", "harness", args, profile="fake").key()


# ----------------------------------------------------------------------------- the plan


def test_plan_is_one_engine_per_setting_and_model_in_scenario_order():
    a, b, c = prepared(scenario("a", x=1), with_baseline(scenario("b", x=2), x=1), scenario("c"))
    c.model_path = "/fake/other"
    plan = engineplan.plan_engines([a, b, c])
    assert list(plan) == [(key(x=1), MODEL), (key(x=2), MODEL), (key(), "/fake/other")]
    assert [[(r.scenario.name, role) for r, role in jobs] for jobs in plan.values()] == [
        [("a", "candidate"), ("b", "baseline")],
        [("b", "candidate")],
        [("c", "candidate")],
    ]
    assert engineplan.setting_of(plan[(key(x=2), MODEL)]).args == {"x": 2}


def test_a_refused_engine_dooms_its_scenarios_and_the_engines_only_they_need():
    a, b, c = prepared(
        with_baseline(scenario("a", x=1), x=9),
        with_baseline(scenario("b", x=2), x=9),
        scenario("c"),
    )
    plan = engineplan.plan_engines([a, b, c])
    refused = {(key(x=1), MODEL): "no Triton", (key(x=2), MODEL): "no Triton"}
    doomed = engineplan.doomed_scenarios(plan, refused)
    assert doomed == {id(a), id(b)}
    assert engineplan.serves_only_doomed(plan[(key(x=9), MODEL)], doomed)
    assert not engineplan.serves_only_doomed(plan[(key(), MODEL)], doomed)


def test_dry_run_records_say_why_an_engine_would_not_start():
    a, b, c = prepared(with_baseline(scenario("a", x=1), x=9), scenario("b", x=9), scenario("c"))
    plan = engineplan.plan_engines([a, b, c])
    refused = {(key(x=1), MODEL): "no Triton"}
    records = engineplan.dry_run_records(plan, refused, engineplan.doomed_scenarios(plan, refused))
    assert [r["n"] for r in records] == [1, 2, 3] and all(r["planned"] for r in records)
    assert records[0]["skipped"] == "cannot run here: no Triton"
    assert "skipped" not in records[1]  # scenario b needs it
    assert "skipped" not in records[2]
    assert records[1]["scenarios"] == ["a", "b"] and records[1]["model"] == MODEL
    fields = ["n", "setting", "model", "planned", "scenarios", "shared_generations", "skipped"]
    assert list(records[0]) == fields and records[0]["shared_generations"] == []

    only_a = engineplan.plan_engines([a])
    doomed = engineplan.doomed_scenarios(only_a, refused)
    assert engineplan.dry_run_records(only_a, refused, doomed)[1]["skipped"] == (
        "not needed: its scenarios cannot run here"
    )


# ----------------------------------------------------------------------------- driving


def test_turn_reads_the_log_offset_unless_the_preloaded_worker_did(tmp_path, events):
    ctx, plan = context(tmp_path, prepared(scenario("a"), scenario("b", x=2)))
    (where1, jobs1), (where2, jobs2) = plan.items()
    (tmp_path / "logs" / f"engine-1-{where1[0]}.log").write_text("an earlier run\n")
    ctx.ahead = NoAhead({2: 7})  # engine 2's worker read its log's size when preloaded
    first = drive.engine_turn(ctx, 1, 2, where1, jobs1)
    assert first.offset == len("an earlier run\n")
    assert drive.engine_turn(ctx, 2, 2, where2, jobs2).offset == 7
    assert first.record == {
        "n": 1,
        "setting": first.setting.to_dict(),
        "model": MODEL,
        "log": str(tmp_path / "logs" / f"engine-1-{where1[0]}.log"),
        "scenarios": ["a"],
    }
    assert first.say("started") == "[engine 1/2] started"


def drive_one(ctx, plan, n=1):
    """drive_engine on the plan's engine n, as drive_engines would (no preloading)."""
    ctx.ahead = NoAhead()
    where, jobs = list(plan.items())[n - 1]
    t = drive.engine_turn(ctx, n, len(plan), where, jobs)
    drive.drive_engine(ctx, t)
    for thread in ctx.closing:
        thread.join()
    return t


def test_refused_engine_is_not_started_and_its_jobs_say_why(tmp_path, events):
    lines = []
    results = prepared(scenario("a", x=1))
    ctx, plan = context(tmp_path, results, refused={(key(x=1), MODEL): "no Triton"}, lines=lines)
    t = drive_one(ctx, plan)
    assert events == [] and t.record["skipped"] == "cannot run here: no Triton"
    er = results[0].runs["candidate"]
    assert (er.error, er.extra) == ("cannot run here: no Triton", {"refused": "no Triton"})
    assert lines[-1] == "[engine 1/1] not started: cannot run here: no Triton"


def test_engine_only_doomed_scenarios_need_is_not_started(tmp_path, events):
    results = prepared(with_baseline(scenario("a", x=1), x=9))
    ctx, plan = context(tmp_path, results, refused={(key(x=1), MODEL): "no Triton"})
    drive_one(ctx, plan, n=2)
    er = results[0].runs["baseline"]
    assert er.error == ("not needed: every scenario it serves needs an engine that cannot run here")
    assert er.extra == {} and events == []


def test_drifted_engine_is_not_started_and_its_jobs_carry_the_drift(tmp_path, events):
    drift = [{"message": "rope_theta read as 10000"}]
    results = prepared(scenario("a"))
    ctx, plan = context(tmp_path, results, drifts={("harness", MODEL): drift})
    t = drive_one(ctx, plan)
    assert t.record["skipped"] == "config drift: rope_theta read as 10000"
    assert results[0].drift == {"candidate": drift}
    assert results[0].runs["candidate"].error is None and events == []


def test_started_engine_serves_each_job_then_closes_in_the_background(tmp_path, events):
    lines = []
    results = prepared(scenario("a"), scenario("b", items=("c", "d", "e")))
    ctx, plan = context(tmp_path, results, lines=lines)
    ctx.run.timings.update(engine_start_s=0.0, generate_s=0.0, tokens_generated=0)
    t = drive_one(ctx, plan)
    assert events == [("create", 0), ("start", 0), ("generate", 0), ("generate", 0), ("close", 0)]
    assert t.record["start_s"] == 0.5 and t.record["effective_config"] == {"engine": 0}
    assert "worker_pgid" in t.record and len(ctx.closing) == 1
    assert ctx.run.timings["engine_start_s"] == 0.5
    assert ctx.run.timings["tokens_generated"] == 2 * 2 + 3 * 2
    er = results[1].runs["candidate"]
    assert (len(er.sequences), er.start_s, er.effective_config) == (3, 0.5, {"engine": 0})
    assert lines[0] == "[engine 1/1] starting " + t.setting.label() + " on fake-model"
    assert lines[1] == "[engine 1/1] started in 0.5s"
    assert lines[3].startswith("  b [candidate]: 3 sequences, 6 tokens in ")


def test_identical_request_is_reused_and_its_tokens_not_counted(tmp_path, events):
    results = prepared(scenario("a"), scenario("b"))
    ctx, plan = context(tmp_path, results)
    ctx.run.timings.update(engine_start_s=0.0, generate_s=0.0, tokens_generated=0)
    drive_one(ctx, plan)
    assert [r.runs["candidate"].reused for r in results] == [False, True]
    assert events.count(("generate", 0)) == 1 and ctx.run.timings["tokens_generated"] == 4
    assert len(results[1].runs["candidate"].sequences) == 2


def test_bug_in_one_jobs_engine_work_fails_that_job_only(tmp_path, events):
    lines = []
    results = prepared(scenario("a", items=("boom",)), scenario("b"))
    ctx, plan = context(tmp_path, results, lines=lines)
    ctx.run.timings.update(engine_start_s=0.0, generate_s=0.0, tokens_generated=0)
    drive_one(ctx, plan)
    assert (
        results[0]
        .runs["candidate"]
        .error.startswith("engine work failed: IndexError: bug in rendering")
    )
    assert results[1].runs["candidate"].error is None and ctx.run.interrupted is None
    assert "  a [candidate]: engine work failed: IndexError" in lines[2]


def test_engine_that_fails_to_start_fails_its_jobs_and_is_still_closed(tmp_path, events):
    lines = []
    FAILS[("start", 0)] = EngineError("engine fake: start failed")
    results = prepared(scenario("a"))
    ctx, plan = context(tmp_path, results, lines=lines)
    t = drive_one(ctx, plan)
    assert events == [("create", 0), ("start", 0), ("close", 0)]
    assert t.record["error"] == "engine fake: start failed" and ctx.run.interrupted is None
    er = results[0].runs["candidate"]
    assert er.error == "engine fake: start failed" and er.log_path == t.record["log"]
    assert lines[-1] == "[engine 1/1] FAILED: engine fake: start failed"


def test_harness_bug_around_an_engine_leaves_the_run_incomplete(tmp_path, events):
    FAILS[("create", 0)] = RuntimeError("bug in the engine constructor")
    results = prepared(scenario("a"))
    ctx, plan = context(tmp_path, results)
    results[0].runs["candidate"] = EngineRun("candidate", results[0].scenario.candidate)
    results[0].runs["candidate"].sequences = [Sequence(0, 0, [1], [2], [-0.1])]
    drive_one(ctx, plan)
    assert ctx.run.interrupted.startswith("internal error: RuntimeError: bug in the engine")
    assert results[0].runs["candidate"].error is None  # its sequences stand
    assert ctx.closing == [] and events == []


def test_engines_start_in_plan_order_and_the_next_one_is_preloaded(tmp_path, events):
    lines = []
    results = prepared(
        dataclasses.replace(scenario("a"), candidate=EngineSetting.make("preload", "harness", {})),
        dataclasses.replace(
            scenario("b"), candidate=EngineSetting.make("preload", "harness", {"x": 1})
        ),
    )
    ctx, plan = context(tmp_path, results, lines=lines)
    closing = drive.drive_engines(ctx, plan)
    for thread in closing:
        thread.join()
    assert closing is ctx.closing and len(closing) == 2
    # engine 2's worker is made and preloaded once engine 1 has started, then taken, not remade
    assert events[:4] == [("create", 0), ("start", 0), ("create", 1), ("preload", 1)]
    assert events.count(("create", 1)) == 1 and ("start", 1) in events
    assert sorted(e for e in events if e[0] == "close") == [("close", 0), ("close", 1)]
    assert [line[:12] for line in lines if line.startswith("[engine")] == [
        "[engine 1/2]",
        "[engine 1/2]",
        "[engine 2/2]",
        "[engine 2/2]",
    ]
    assert list(ctx.run.timings) == [
        "engine_start_s",
        "generate_s",
        "engine_stop_s",
        "tokens_generated",
    ]


def test_interrupt_stops_the_engines_and_marks_what_did_not_finish(tmp_path, events, monkeypatch):
    monkeypatch.setitem(categories.registry(), "fake", InterruptingCategory())
    lines = []
    results = prepared(scenario("a"), scenario("stop"), scenario("later", x=2))
    ctx, plan = context(tmp_path, results, lines=lines)
    closing = drive.drive_engines(ctx, plan)
    for thread in closing:
        thread.join()
    assert ctx.run.interrupted == "interrupted by the user"
    assert lines[-1] == "interrupted: engines stopped; reporting what finished"
    assert results[0].runs["candidate"].error is None
    assert results[1].runs["candidate"].error == "not finished: interrupted by the user"
    assert results[2].runs == {}  # its engine never started
    assert ("start", 2) not in events and ("close", 0) in events


def test_harness_bug_between_engines_stops_the_loop(tmp_path, events, monkeypatch):
    lines = []
    results = prepared(scenario("a"), scenario("b", x=2))
    ctx, plan = context(tmp_path, results, lines=lines)
    real = drive.engine_turn

    def turn(ctx, n, of, where, jobs):
        if n == 2:
            raise ValueError("bug between engines")
        return real(ctx, n, of, where, jobs)

    monkeypatch.setattr(drive, "engine_turn", turn)
    drive.drive_engines(ctx, plan)
    assert ctx.run.interrupted.startswith("internal error: ValueError: bug between engines")
    assert lines[-1].endswith(": engines stopped; reporting what finished")
    assert results[0].runs["candidate"].error is None and results[1].runs == {}


def test_progress_messages_name_the_scenario_and_role(tmp_path, events):
    seen = []
    results = prepared(scenario("a"), with_baseline(scenario("b", x=2)))
    ctx, plan = context(tmp_path, results, progress=seen.append)
    ctx.run.timings.update(engine_start_s=0.0, generate_s=0.0, tokens_generated=0)
    drive_one(ctx, plan)
    assert seen == [{"done": 1, "total": 2, "scenario": "a", "role": "candidate"}]


# ----------------------------------------------------------------------------- runner's steps


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "bin").mkdir()
    install_fakes(monkeypatch.setattr, monkeypatch.setitem, write_shim(tmp_path / "bin"))


def test_log_dir_is_made_with_the_output_dir(tmp_path):
    assert runner._log_dir(tmp_path / "out" / "run") == tmp_path / "out" / "run" / "logs"
    assert (tmp_path / "out" / "run" / "logs").is_dir()
    assert runner._log_dir(tmp_path / "out" / "run").is_dir()  # again: no error


@pytest.mark.parametrize(
    "engine,preflight,warmed", [("vllm", True, True), ("vllm", False, False), ("fake", True, False)]
)
def test_validator_warms_only_for_a_vllm_engine(tmp_path, monkeypatch, engine, preflight, warmed):
    calls = []
    monkeypatch.setattr(envs, "python_for", lambda env, log: f"python-{env}")
    monkeypatch.setattr(engine_checks, "warm_validator", lambda python, path: calls.append(python))
    run = RunResult("test", [ScenarioResult(scenario("a", engine=engine))])
    runner._warm_validator(run, preflight, tmp_path, quiet)
    assert calls == (["python-harness"] if warmed else [])


def test_every_vllm_environment_warms_its_validator_once(tmp_path, monkeypatch):
    """A run on V1 (harness) and V0 (its own environment) imports both vLLMs at once, each
    once however many scenarios use it."""
    calls = []
    monkeypatch.setattr(envs, "python_for", lambda env, log: f"python-{env}")
    monkeypatch.setattr(
        engine_checks, "warm_validator", lambda python, path: calls.append((python, path.name))
    )
    v0 = dataclasses.replace(
        scenario("b", engine="vllm"), candidate=EngineSetting.make("vllm", "v0", {}, profile="v0")
    )
    run = RunResult("test", [ScenarioResult(s) for s in (scenario("a", engine="vllm"), v0, v0)])
    runner._warm_validator(run, True, tmp_path, quiet)
    assert calls == [
        ("python-harness", "validate-harness.log"),
        ("python-v0", "validate-v0.log"),
    ]


def test_prepare_resolves_models_loads_prompts_and_finds_interpreters(tmp_path, fakes):
    run = RunResult("test", [ScenarioResult(scenario("a")), ScenarioResult(scenario("b"))])
    tokenizers, pythons, drifts, refused = runner._prepare(run, False, tmp_path, quiet)
    assert [r.model_path for r in run.results] == ["/fake/fake-model"] * 2
    assert list(tokenizers) == ["/fake/fake-model"] and list(pythons) == ["harness"]
    assert (drifts, refused) == ({}, {})
    assert run.models == {
        "/fake/fake-model": {"name": "fake-model", "fingerprint": "fake-fingerprint"}
    }
    assert [p.text for p in run.results[1].prompts] == ["a", "b"]
    assert list(run.timings) == ["prepare_s", "validate_s"]


def judged(*names: str, **options) -> RunResult:
    results = prepared(*(scenario(n, **options) for n in names))
    for res in results:
        res.runs["candidate"] = EngineRun("candidate", res.scenario.candidate)
        res.runs["candidate"].sequences = [Sequence(0, 0, [1], [2], [-0.1])]
    return RunResult("test", results)


def test_judging_gives_each_verdict_then_waits_for_the_closing_engines(tmp_path, fakes):
    run = judged("a", "b")
    closing = [threading.Thread(target=time.sleep, args=(0.2,))]
    closing[0].start()
    runner._judge_all(run, quiet, closing)
    assert not closing[0].is_alive() and run.timings["engine_stop_s"] >= 0.1
    assert [r.verdict.outcome for r in run.results] == ["pass", "pass"]
    assert list(run.timings) == ["score_s", "judge_s", "engine_stop_s"]
    assert run.interrupted is None and isinstance(run.reference_stats, dict)


def test_interrupt_while_judging_keeps_the_verdicts_reached(tmp_path, fakes):
    lines = []
    run = judged("a")
    run.results += judged("b", judge="interrupt").results + judged("c").results
    runner._judge_all(run, lines.append, [])
    assert run.interrupted == "terminated by signal 15"
    assert [r.verdict is None for r in run.results] == [False, True, True]
    assert lines == ["interrupted while judging: reporting the verdicts reached"]


def test_judge_error_is_that_scenarios_verdict_only(tmp_path, fakes):
    res = judged("a", judge="raise").results[0]
    verdict, detail = runner.judge(res, refs=runner.References(quiet))
    assert (verdict.outcome, verdict.diagnosis, detail) == ("unresolved", "judge_error", {})


def test_timings_total_builds_and_overhead(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    timings = {"engine_start_s": 2.0, "generate_s": 3.0, "score_s": 1.0}
    b_run = phases.build_seconds()
    with phases.building():
        now[0] += 4.0
    now[0] += 10.0
    runner._time(timings, 90.0, b_run)
    assert timings["total_s"] == 24.0 and timings["build_s"] == 4.0
    assert timings["harness_overhead_s"] == 24.0 - 2.0 - 3.0 - 1.0 - 4.0
    assert list(timings)[-3:] == ["total_s", "build_s", "harness_overhead_s"]


def test_lap_leaves_out_the_builds_in_it(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    t0, b0 = time.perf_counter(), phases.build_seconds()
    with phases.building():
        now[0] += 5.0
    now[0] += 2.0
    assert phases.lap(t0, b0) == 2.0


def test_run_is_the_steps_in_order(tmp_path, fakes, monkeypatch):
    """The whole pipeline on fakes: engines start and close in plan order, every engine is
    closed before run() returns, and the timings come in the order reports show them."""
    events = []
    monkeypatch.setattr(engines, "create", lambda s, *a, **k: PreloadingEngine(events, s))
    lines = []
    run = runner.run([scenario("a"), scenario("b", x=2)], tmp_path / "out", log=lines.append)
    assert [e for e in events if e[0] != "close"] == [
        ("create", 0),
        ("start", 0),
        ("create", 2),
        ("preload", 2),
        ("generate", 0),
        ("start", 2),
        ("generate", 2),
    ]
    assert sorted(e for e in events if e[0] == "close") == [("close", 0), ("close", 2)]
    assert [r.verdict.outcome for r in run.results] == ["pass", "pass"]
    assert [e["n"] for e in run.engines] == [1, 2] and run.interrupted is None
    assert list(run.timings) == [
        "prepare_s",
        "validate_s",
        "engine_start_s",
        "generate_s",
        "engine_stop_s",
        "tokens_generated",
        "score_s",
        "judge_s",
        "total_s",
        "build_s",
        "harness_overhead_s",
    ]
    assert lines[0].startswith("[engine 1/2] starting ") and (tmp_path / "out" / "logs").is_dir()


def test_dry_run_plans_and_starts_nothing(tmp_path, fakes, monkeypatch):
    monkeypatch.setattr(engines, "create", lambda *a, **k: pytest.fail("an engine was made"))
    run = runner.run([scenario("a"), scenario("b", x=2)], tmp_path / "out", dry_run=True)
    assert [e["planned"] for e in run.engines] == [True, True]
    assert list(run.timings) == ["prepare_s", "validate_s", "build_s"]
    assert all(r.verdict is None for r in run.results)


def test_verdict_of_failed_engine_is_unresolved_without_judging(tmp_path):
    res = prepared(scenario("a"))[0]
    res.runs["candidate"] = EngineRun(
        "candidate", res.scenario.candidate, error="engine fake: start failed"
    )
    verdict, _ = runner.judge(res, refs=None)
    assert verdict.outcome == "unresolved" and isinstance(verdict, Verdict)
