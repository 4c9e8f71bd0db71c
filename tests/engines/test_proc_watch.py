"""proc_watch: a vLLM-named process of a worker's group that dies is reported after the grace,
on real processes (a group led by a shell, children named as vLLM V1 names its own)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from parity.engines import proc_watch
from parity.engines.proc_watch import EngineProcessWatch

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")

NAMED = "open('/proc/self/comm', 'w').write({!r}); import time; time.sleep(120)"


@pytest.fixture
def group():
    """A process group with two children: "VLLM::EngineCore" and a plain "helper"; yields
    (leader, {name: pid}) once both have taken their names."""
    script = (
        "import subprocess, sys, time\n"
        f"kids = [subprocess.Popen([sys.executable, '-c', {NAMED.format('VLLM::EngineCore')!r}]),\n"
        f"        subprocess.Popen([sys.executable, '-c', {NAMED.format('helper')!r}])]\n"
        "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
        "time.sleep(120)\n"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
    )
    core, helper = (int(p) for p in leader.stdout.readline().split())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        names = {comm for comm, _ in proc_watch.group_processes(leader.pid).values()}
        if {"VLLM::EngineCor", "helper"} <= names:
            break
        time.sleep(0.05)
    yield leader, {"core": core, "helper": helper}
    os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()


def test_group_processes_names_the_group_and_nothing_else(group):
    leader, pids = group
    found = proc_watch.group_processes(leader.pid)
    assert set(found) == {leader.pid, pids["core"], pids["helper"]}
    assert found[pids["core"]][0] == "VLLM::EngineCor"  # comm keeps 15 characters


def test_a_dead_engine_process_is_reported_after_the_grace_only(group):
    leader, pids = group
    watch = EngineProcessWatch(leader.pid, grace=5.0)
    assert watch.check(now=100.0) is None and watch.seen == {pids["core"]: "VLLM::EngineCor"}
    os.kill(pids["helper"], signal.SIGKILL)  # not an engine process: never reported
    time.sleep(0.2)
    assert watch.check(now=110.0) is None
    os.kill(pids["core"], signal.SIGKILL)  # a zombie until the leader reaps it: dead
    time.sleep(0.2)
    assert watch.check(now=120.0) is None  # noticed now, within the grace
    assert watch.check(now=124.9) is None
    message = watch.check(now=125.0)
    assert message == f"its vLLM process VLLM::EngineCor (pid {pids['core']}) died"


def test_a_zombie_never_seen_alive_is_dead(group):
    leader, pids = group
    os.kill(pids["core"], signal.SIGKILL)
    time.sleep(0.2)
    watch = EngineProcessWatch(leader.pid, grace=0.0)
    assert "VLLM::EngineCor" in (watch.check(now=1.0) or "")


def test_a_group_without_engine_processes_never_fires():
    plain = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        watch = EngineProcessWatch(plain.pid, grace=0.0)
        assert watch.check(now=1.0) is None and watch.check(now=1e6) is None
    finally:
        plain.kill()
        plain.wait()


@pytest.mark.parametrize(("value", "grace"), [("3", 3.0), ("-1", 0.0), ("soon", 10.0)])
def test_grace_from_env(monkeypatch, value, grace):
    monkeypatch.setenv(proc_watch.GRACE_ENV, value)
    assert proc_watch.grace_from_env() == grace
