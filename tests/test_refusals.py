"""A mode the engine's vLLM refuses on this machine (Model Runner V2 without Triton on vLLM's
CPU build) is an unresolved verdict for the scenarios that need it, with vLLM's reason, not a
usage error for the whole run: unit tests on fakes, then the real 0.32 validator and CLI."""

from __future__ import annotations

import dataclasses
import json
import signal
import sys

import pytest
from fault_fakes import install_fakes, quiet, scenario, write_shim

from parity.engines.base import EngineSetting
from parity.report import build as report_build
from parity.run import preflight as validate
from parity.run import runner
from parity.run.preflight import Check

MRV2 = {"VLLM_USE_V2_MODEL_RUNNER": "1"}
TRITON = (
    "ValidationError: 1 validation error for VllmConfig Value error, Model Runner V2 "
    "requires Triton. [type=value_error, input_value=ArgsKwargs((), {}), "
    "input_type=ArgsKwargs]"
)


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "bin").mkdir()
    install_fakes(monkeypatch.setattr, monkeypatch.setitem, write_shim(tmp_path / "bin"))
    # The validator's answer for settings that ask for MRV2: refused here.
    monkeypatch.setattr(
        validate,
        "refusal",
        lambda check, python: (
            "vLLM 0.32.0 (harness) refuses VLLM_USE_V2_MODEL_RUNNER=1 on this machine: Model "
            "Runner V2 requires Triton."
            if check.setting.variables.get("VLLM_USE_V2_MODEL_RUNNER") == "1"
            else None
        ),
    )
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def _with_vars(sc, role="candidate", **variables):
    setting = EngineSetting.make(
        "fake", "harness", dict(getattr(sc, role).args), variables, profile="fake"
    )
    return dataclasses.replace(sc, **{role: setting})


def test_refused_engine_makes_its_scenarios_unresolved_only(tmp_path, fakes):
    refused = _with_vars(scenario("mrv2"), **MRV2)
    pair = dataclasses.replace(
        _with_vars(scenario("pair", mrv=2), **MRV2),
        baseline=EngineSetting.make("fake", "harness", {"mrv": 1}, profile="fake"),
    )
    run = runner.run([refused, pair, scenario("plain")], tmp_path, log=quiet)
    verdicts = {r.scenario.name: r.verdict for r in run.results}
    assert verdicts["plain"].outcome == "pass"
    for name in ("mrv2", "pair"):
        assert verdicts[name].outcome == "unresolved"
        assert verdicts[name].diagnosis == "refused_here"
        assert "candidate engine cannot run on this machine" in verdicts[name].message
        assert "Model Runner V2 requires Triton" in verdicts[name].message
    skipped = [e for e in run.engines if e.get("skipped")]
    # The refused engines and the pair's baseline (needed by nothing else) never start.
    assert len(skipped) == 3 and all("start_s" not in e for e in skipped)
    assert any(e["skipped"].startswith("not needed") for e in skipped)
    assert report_build.exit_code(run) == 125


def test_refusal_is_read_from_the_validators_env_answer():
    """Only an env-kind answer (the config builds without the variable) is a refusal; a
    refused engine-argument value is not (negative control: that stays a usage error)."""
    check = Check(
        "x.toml",
        "candidate.engine_args",
        EngineSetting.make("vllm", "harness", {"enforce_eager": True}, MRV2),
        "/m",
    )
    other = Check(
        "x.toml",
        "candidate.engine_args",
        EngineSetting.make("vllm", "harness", {"max_model_len": "abc"}),
        "/m",
    )
    env_kind = {"index": 0, "name": "VLLM_USE_V2_MODEL_RUNNER", "kind": "env", "message": TRITON}
    value_kind = {"index": 0, "name": "max_model_len", "kind": "value", "message": "bad"}
    validate._SEEN[("py", validate._key(check))] = ([env_kind], "0.32.0", {})
    validate._SEEN[("py", validate._key(other))] = ([value_kind], "0.32.0", {})
    try:
        assert validate.refusal(check, "py") == (
            "vLLM 0.32.0 (harness) refuses VLLM_USE_V2_MODEL_RUNNER=1 on this machine: Model "
            "Runner V2 requires Triton."
        )
        assert validate.refusal(other, "py") is None
        # bisect reports it as a problem of the variable (exit 2 there: no verdict to give)
        problem = validate._problem(check, env_kind, "0.32.0")
        assert problem[1] == "candidate.env_vars.VLLM_USE_V2_MODEL_RUNNER"
    finally:
        del (
            validate._SEEN[("py", validate._key(check))],
            validate._SEEN[("py", validate._key(other))],
        )


@pytest.mark.engine
def test_cpu_vllm_refuses_model_runner_v2_naming_the_cause(tiny_model, tmp_path):
    """The real 0.32 validator (no engine started): MRV2 is blamed on its variable, MRV1 and
    the profile without the variable build."""
    from parity.engines.settings import make_setting

    checks = [
        Check(f"case-{p}.toml", "candidate.engine_args", make_setting(p), str(tiny_model))
        for p in ("v1-mrv2", "v1-mrv1", "v1-parity")
    ]
    pythons = {"harness": sys.executable}
    problems = validate.engine_problems(checks, pythons, tmp_path)
    assert [p[:2] for p in problems] == [
        ("case-v1-mrv2.toml", "candidate.env_vars.VLLM_USE_V2_MODEL_RUNNER")
    ]
    assert "requires Triton" in validate.refusal(checks[0], sys.executable)
    assert validate.refusal(checks[1], sys.executable) is None


@pytest.mark.engine
def test_unreadable_variable_value_is_a_usage_error_not_a_refusal(tiny_model, tmp_path):
    """Negative control: VLLM_USE_V2_MODEL_RUNNER=yes also fails the config (vLLM reads it
    with int()), but that is a mistake in the setting: a problem (exit 2), never refused_here."""
    from parity.engines.settings import make_setting

    check = Check(
        "case.toml",
        "candidate.engine_args",
        make_setting("v1-mrv1", env_vars={"VLLM_USE_V2_MODEL_RUNNER": "yes"}),
        str(tiny_model),
    )
    problems = validate.engine_problems([check], {"harness": sys.executable}, tmp_path)
    assert [p[:2] for p in problems] == [
        ("case.toml", "candidate.env_vars.VLLM_USE_V2_MODEL_RUNNER")
    ]
    assert "cannot read this value" in problems[0][2] and "'yes'" in problems[0][2]
    assert validate.refusal(check, sys.executable) is None


@pytest.mark.engine
def test_cuda_scenarios_on_cpu_exit_125_before_any_engine(tmp_path):
    from conftest import SCENARIOS, run_cli

    out = tmp_path / "out"
    result = run_cli(
        [
            "check",
            str(SCENARIOS / "cuda" / "logprobs-mrv2-processed.toml"),
            "--model",
            "tiny",
            "--output",
            str(out),
        ]
    )
    assert result.exit_code == 125, result.output
    data = json.loads((out / "report.json").read_text())
    [sc] = data["scenarios"]
    assert sc["verdict"]["diagnosis"] == "refused_here"
    assert "Model Runner V2 requires Triton" in sc["verdict"]["message"]
    assert all(e.get("skipped") and "start_s" not in e for e in data["engines"])
