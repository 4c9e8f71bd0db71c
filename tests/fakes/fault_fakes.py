"""Fakes for tests/test_faults.py, importable by the child processes those tests start: a
category and engine kind steered by each scenario's fields, runner.run's preparation (models,
tokenizers, validators) faked away, an engine interpreter that runs tests/fake_engine_worker.py
behind parity's real worker-process code, and the children themselves."""

import faulthandler
import itertools
import json
import operator
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

from parity import categories, engines
from parity.categories.base import Category
from parity.engines.base import EngineSetting, SamplingSpec, Sequence
from parity.report import files as report_files
from parity.run import drive, modelcheck, runner
from parity.run import preflight as validate
from parity.run.scenario import Scenario
from parity.setup import envs, models
from parity.verdicts.core import Verdict
from parity.verdicts.formulas import ClipRange

FAKES = Path(__file__).resolve().parent
FAKE_WORKER = FAKES / "fake_engine_worker.py"
CHILD = (
    f"import sys; sys.path.insert(0, {str(FAKES)!r}); import fault_fakes; "
    "fault_fakes.child(sys.argv[1:])"
)
BLOB = 2_000_000  # characters of one scenario's metrics: a report.json of 2 MB


class FakeCategory(Category):
    """Judges by the scenario's options["judge"]: pass, raise, interrupt, or sleep (SIGTERM)."""

    name = "fake"

    def judge(self, res, refs):
        action = res.scenario.options.get("judge", "pass")
        if action == "raise":
            raise ValueError("bad data in judging")
        if action == "interrupt":
            raise KeyboardInterrupt("terminated by signal 15")
        if action == "sleep":
            print("JUDGING", flush=True)
            time.sleep(60)
        return Verdict("pass", None, "fine"), {"headline": "ok"}


class FakeEngine:
    """An engine without a process; `broken=True` in its args is a bug in its constructor."""

    pgid = None
    start_s = 0.01

    def __init__(self, setting, model_path, python, log_path, **kwargs):
        if setting.args.get("broken"):
            raise RuntimeError("bug in the engine constructor")

    def start(self) -> None:
        pass

    def effective_config(self) -> dict:
        return {"key": {"engine_impl": "fake"}}

    def generate(self, prompts, sampling) -> list[Sequence]:
        return [Sequence(i, 0, p, [5, 6], [-0.5, -0.25], text="ok") for i, p in enumerate(prompts)]

    def close(self) -> None:
        pass


def scenario(
    name: str, judge: str = "pass", engine: str = "fake", items=("a", "b"), **engine_args
) -> Scenario:
    """A fake-category scenario; scenarios with equal engine args share one engine."""
    return Scenario(
        Path(f"{name}.toml"),
        name,
        "fake",
        "",
        "fake-model",
        None,
        list(items),
        0,
        False,
        SamplingSpec(max_tokens=2),
        EngineSetting.make(engine, "harness", engine_args, profile="fake"),
        None,
        "float32",
        {},
        ClipRange(),
        options={"judge": judge},
    )


def install_fakes(setattr_, setitem, python: str) -> None:
    """runner.run without models, tokenizers, validators or identity checks; the fake category
    and engine kind registered (monkeypatch's functions, or plain ones in a child process)."""
    transformers = types.ModuleType("transformers")
    transformers.AutoTokenizer = types.SimpleNamespace(from_pretrained=lambda path: None)
    setitem(sys.modules, "transformers", transformers)
    setattr_(models, "resolve_model", lambda name, log=None: Path("/fake") / str(name))
    setattr_(models, "fingerprint", lambda path: "fake-fingerprint")
    setattr_(validate, "engine_problems", lambda checks, pythons, log_dir: [])
    setattr_(modelcheck, "add_identity", lambda res, verdict, detail: None)
    setattr_(envs, "python_for", lambda env, log: python)
    setattr_(drive, "render", fake_render)
    setitem(categories.registry(), "fake", FakeCategory())
    setitem(engines.ENGINES, "fake", "fault_fakes:FakeEngine")


def fake_render(tokenizer, prompts, chat=None) -> list[list[int]]:
    if any(p.text == "boom" for p in prompts):
        raise IndexError("bug in rendering")
    return [[1, 2, 3] for _ in prompts]


def write_shim(folder: Path) -> str:
    """An "engine interpreter" that runs tests/fake_engine_worker.py instead of vLLM's worker."""
    shim = folder / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -u "{FAKE_WORKER}" "$3" "$4"\n')
    shim.chmod(0o755)
    return str(shim)


def quiet(message: str) -> None:
    """A log that says nothing."""


def child(argv: list[str]) -> None:
    """Entry point of a `parity check OUT` child: argv is OUT PYTHON SCENARIOS (JSON). It takes
    SIGINT as parity started from a terminal does (whatever its parent left ignored or
    blocked), and dumps its threads' stacks to stderr on SIGUSR1 (signal_child's diagnosis)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    install_fakes(setattr, operator.setitem, argv[1])
    specs = json.loads(argv[2])
    import parity.run.scenario
    from parity.cli import app

    parity.run.scenario.load_scenarios = lambda targets, overrides: [scenario(**s) for s in specs]
    app(["check", "--output", argv[0]], prog_name="parity")


def rewrite_forever(out: Path) -> None:
    """Rewrite a large report through report_files.write until killed."""
    out.mkdir(exist_ok=True)
    results = [runner.ScenarioResult(scenario(f"s{i}")) for i in range(3)]
    for res in results:
        res.verdict, res.detail = Verdict("pass", None, "fine"), {"headline": "ok"}
    results[0].detail["blob"] = "x" * BLOB
    run = runner.RunResult("kill-test", results, timings={"total_s": 1.0})
    for n in itertools.count():
        run.timings["writes"] = n
        report_files.write(run, out, 0)


def spawn(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PARITY_CACHE_DIR": str(tmp_path / "cache")}
    with open(tmp_path / "child.stderr", "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
