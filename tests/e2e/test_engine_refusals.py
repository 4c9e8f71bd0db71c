"""The real-engine tests of test_refusals.py's subject (A mode the engine's vLLM refuses on this machine (Model Runner V2 without Triton on vLLM's)."""

from __future__ import annotations

import json
import sys

from parity.run import preflight as validate
from parity.run.preflight import Check


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


def test_cuda_scenarios_on_cpu_exit_125_before_any_engine(tmp_path):
    from conftest import SCENARIOS, run_cli

    out = tmp_path / "out"
    result = run_cli(
        [
            "check",
            str(SCENARIOS / "cuda" / "logprobs-mrv2-processed.toml"),
            str(SCENARIOS / "cuda" / "update-transfer-ipc.toml"),
            "--model",
            "tiny",
            "--output",
            str(out),
        ]
    )
    assert result.exit_code == 125, result.output
    data = json.loads((out / "report.json").read_text())
    mrv2, ipc = sorted(data["scenarios"], key=lambda s: s["name"])
    assert mrv2["verdict"]["diagnosis"] == ipc["verdict"]["diagnosis"] == "refused_here"
    assert "Model Runner V2 requires Triton" in mrv2["verdict"]["message"]
    # vLLM's weight-transfer backend over CUDA IPC (docs/measurements.md#weight-transfer-backends-cpu)
    assert "Torch not compiled with CUDA enabled" in ipc["verdict"]["message"]
    assert all(e.get("skipped") and "start_s" not in e for e in data["engines"])


def test_cpu_vllm_refuses_weight_transfer_backends_with_its_reason(tiny_model, tmp_path):
    """The real 0.32 validator (no engine started): an engine asking for a weight-transfer
    backend this build cannot run is refused with vLLM's reason, not a problem in the file;
    negative control: the same setting without it builds and is not refused."""
    from parity.engines.settings import make_setting

    def check(name, **args):
        setting = make_setting("v1-parity", engine_args=args)
        return Check(f"{name}.toml", "candidate.engine_args", setting, str(tiny_model))

    checks = [
        check("nccl", weight_transfer_config={"backend": "nccl"}),
        check("ipc", weight_transfer_config={"backend": "ipc"}),
        check("plain"),
    ]
    validate.engine_problems(checks, {"harness": sys.executable}, tmp_path)
    assert "NCCL only supports CUDA and ROCm backends" in validate.refusal(
        checks[0], sys.executable
    )
    assert "Torch not compiled with CUDA enabled" in validate.refusal(checks[1], sys.executable)
    assert validate.refusal(checks[2], sys.executable) is None
