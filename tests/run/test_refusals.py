"""A mode the engine's vLLM refuses on this machine (Model Runner V2 without Triton on vLLM's
CPU build) is an unresolved verdict for the scenarios that need it, with vLLM's reason, not a
usage error for the whole run: unit tests on fakes, then the real 0.32 validator and CLI."""

from __future__ import annotations

import dataclasses
import signal

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
