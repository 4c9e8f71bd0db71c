"""Shared fixtures: real engine runs are expensive (15-50 s per start), so each distinct run
happens once per session and tests read its results.

The tree mirrors parity/ (tests/run/ tests parity/run/, ...). Markers are set by directory:
every test under tests/e2e/ starts real engines (`engine`), every test under tests/browser/
opens a real browser (`browser`); `make unit` deselects both. The fakes and the helpers several
test modules share live in tests/fakes/ (on the import path)."""

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SCENARIOS = REPO / "scenarios"
FIXTURES = TESTS / "fixtures"
sys.path.insert(0, str(TESTS / "fakes"))
MARKERS_BY_DIRECTORY = {"e2e": "engine", "browser": "browser"}
# Fixtures that unit tests and engine tests of one subject share (tests/fakes/).
pytest_plugins = ["identity_fixtures", "models_fixtures"]


def pytest_configure(config):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # `make test` runs pytest-xdist workers (TEST_WORKERS): worker i binds its engines' OpenMP
    # threads to core i modulo the cores (vLLM's default binds every engine to core 0 and
    # reserves core 1), so the workers' engines spread over the cores; with more workers than
    # cores, some share a core. A binding the user set wins.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    cores = sorted(os.sched_getaffinity(0))
    if worker.startswith("gw") and count > 1 and len(cores) > 1:
        index = int(worker[2:]) % len(cores)
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(cores[index]))
        # The trainer-side forwards in each worker: as many threads as its share of the cores
        # (two workers with two threads each on two cores slow each other down).
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(cores) // count)))


# Fixtures whose work several tests share; a test using one runs on the worker that computed it
# (xdist_group), so pytest-xdist does not compute it twice. The session run of the shipped
# scenarios serves four modules; other expensive fixtures group by module or by their name.
SUITE = {"suite_run", "shipped_run", "runtime_run", "rl_run"}
CHEAP = {"tiny_model", "perturbed", "tmp_path_factory", "worker_id", "testrun_uid", "chromium"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        _mark_by_directory(item)
        group = _xdist_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def _top_dir(item) -> str | None:
    """The test's directory right under tests/ (None for a module of tests/ itself)."""
    parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 else None


def _mark_by_directory(item) -> None:
    """The marker of the test's top directory under tests/; a marker only a directory gives,
    set by hand elsewhere, is an error (a real-engine test outside tests/e2e/ would run in
    `make unit`'s fast lane)."""
    mine = MARKERS_BY_DIRECTORY.get(_top_dir(item))
    if mine:
        item.add_marker(getattr(pytest.mark, mine))
    for marker in set(MARKERS_BY_DIRECTORY.values()) - {mine}:
        if item.get_closest_marker(marker) is not None:
            raise pytest.UsageError(
                f"{item.nodeid}: marked {marker!r} by hand; tests that "
                f"need it live in tests/{_dir_of(marker)}/"
            )


def _dir_of(marker: str) -> str:
    return next(d for d, m in MARKERS_BY_DIRECTORY.items() if m == marker)


def _xdist_group(item) -> str | None:
    names = list(getattr(item, "fixturenames", []))
    if SUITE & set(names):
        return "suite"
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    scopes = {name: (defs.get(name) or [None])[-1] for name in names if name not in CHEAP}
    scopes = {name: f.scope for name, f in scopes.items() if f is not None}
    # A session fixture first: its users in other modules must land on the same worker.
    session = [name for name in names if scopes.get(name) == "session"]
    if session:
        return f"session:{session[0]}"
    if "module" in scopes.values():
        return item.module.__name__
    return None


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny fixture model, built once into the cache."""
    from parity.setup.models import build_model

    return build_model("tiny", log=lambda m: None)


@pytest.fixture(scope="session")
def perturbed(tiny_model):
    """The tiny model with seeded noise on its weights (the new weights of update tests)."""
    from parity.setup.models import perturb

    return perturb(tiny_model, 1, 1.0, log=lambda m: None)


# vLLM V1's engine core (and its one CPU worker) in the test's engine process instead of two more
# processes that import vLLM again: ~13 s less per V1 engine start and stop on the tiny model
# (docs/measurements.md#in-process-tests). The same kernels, sampler and logprobs; every request
# of a generate call is queued before the first step (docs/measurements.md#reproducibility).
# Used by the large fixtures whose scenarios do no weight update: an in-process core has no
# call_utility (the update probes' pause) and refuses pause mode "wait". Shipped scenarios and
# `make demo` keep vLLM's default (core in its own process).
IN_PROCESS_V1 = ("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def run_cli(args):
    from parity.cli import app

    result = CliRunner().invoke(app, args)
    return result


def check_tiny(files, out):
    """`parity check FILES --model tiny --output OUT`: (cli result, report.json or None)."""
    result = run_cli(["check", *map(str, files), "--model", "tiny", "--output", str(out)])
    report = (
        json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    )
    return result, report


LOGPROBS_SCENARIOS = ("logprobs-processed", "logprobs-raw-control", "logprobs-support-control")
RUNTIME_SCENARIOS = (
    "runtime-v0-vs-v1-defaults",
    "runtime-v0-vs-v1-parity",
    "runtime-model-mismatch-control",
    "runtime-prefix-cache",
    "runtime-batch-invariance",
    "runtime-prefill-consistency",
    "runtime-prefill-semantics-control",
    "lmhead-v1-fp32",
    "lmhead-v1-bf16-control",
    "lmhead-v0-fp32head",
    "lmhead-v0-bf16-control",
)
RL_SCENARIOS = ("rl-v0-vs-v1-parity", "rl-v0-vs-v1-defaults")


@pytest.fixture(scope="session")
def suite_run(tiny_model, tmp_path_factory):
    """`parity check` on the shipped logprobs, runtime, lm_head and rl scenarios (the rl pair with
    `direct = true`, its opt-in direct comparison) with the tiny
    model, once for the session: five engine starts (V1 defaults, V1 parity, V1 with another
    rope_theta, V0, V0 patched), each serving every scenario of its setting. Progress messages
    as plain lines (test_engine_v0 reads them). Returns (cli result, run dir, report.json)."""
    out = tmp_path_factory.mktemp("suite")
    files = [SCENARIOS / f"{n}.toml" for n in LOGPROBS_SCENARIOS + RUNTIME_SCENARIOS]
    direct = tmp_path_factory.mktemp("direct")
    for name in RL_SCENARIOS:  # the direct comparison is opt-in (rl's `direct` field)
        files.append(direct / f"{name}.toml")
        files[-1].write_text("direct = true\n" + (SCENARIOS / f"{name}.toml").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PARITY_PROGRESS_EVERY_S", "0")
        mp.setenv(*IN_PROCESS_V1)
        result, report = check_tiny(files, out)
    assert report is not None, result.output
    return result, out, report


def only(report, names):
    """report.json restricted to the named scenarios and the engines that served them."""
    scenarios = [s for s in report["scenarios"] if s["name"] in names]
    engines = [e for e in report["engines"] if set(e["scenarios"]) & set(names)]
    return {**report, "scenarios": scenarios, "engines": engines}


@pytest.fixture(scope="session")
def shipped_run(suite_run):
    """The shipped logprobs scenarios of the session's run: (result, run dir, report)."""
    result, out, report = suite_run
    return result, out, only(report, LOGPROBS_SCENARIOS)


@pytest.fixture(scope="session")
def runtime_run(suite_run):
    """The shipped runtime and lm_head scenarios of the session's run."""
    result, out, report = suite_run
    return result, out, only(report, RUNTIME_SCENARIOS)


@pytest.fixture(scope="session")
def rl_run(suite_run):
    """The shipped rl scenarios (V0 baseline, V1 candidates) of the session's run."""
    result, _, report = suite_run
    return result, only(report, RL_SCENARIOS)
