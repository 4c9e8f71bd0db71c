"""Shared fixtures: real engine runs are expensive (15-50 s per start), so each distinct run
happens once per session and tests read its results."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"


def pytest_configure(config):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny fixture model, built once into the cache."""
    from parity.models import build_model

    return build_model("tiny", log=lambda m: None)


def run_cli(args):
    from parity.cli import app

    result = CliRunner().invoke(app, args)
    return result


def check_tiny(files, out):
    """`parity check FILES --model tiny --output OUT`: (cli result, report.json or None)."""
    result = run_cli(["check", *map(str, files), "--model", "tiny", "--output", str(out)])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() \
        else None
    return result, report


@pytest.fixture(scope="session")
def shipped_run(tiny_model, tmp_path_factory):
    """`parity check` on the shipped logprobs scenarios with the tiny model, once."""
    out = tmp_path_factory.mktemp("shipped")
    result, report = check_tiny([SCENARIOS / "logprobs-processed.toml",
                                 SCENARIOS / "logprobs-raw-control.toml",
                                 SCENARIOS / "logprobs-support-control.toml"], out)
    return result, out, report


RUNTIME_SCENARIOS = ("runtime-v0-vs-v1-defaults", "runtime-v0-vs-v1-parity",
                     "runtime-model-mismatch-control",
                     "runtime-prefix-cache", "runtime-batch-invariance",
                     "runtime-prefill-consistency", "runtime-prefill-semantics-control",
                     "lmhead-v1-fp32", "lmhead-v1-bf16-control", "lmhead-v0-fp32head",
                     "lmhead-v0-bf16-control")


@pytest.fixture(scope="session")
def runtime_run(tiny_model, tmp_path_factory):
    """`parity check` on the shipped runtime and lm_head scenarios with the tiny model, once:
    five engine starts (V1 defaults, V1 with another rope_theta, V1 parity, V0, V0 patched)."""
    out = tmp_path_factory.mktemp("runtime")
    result, report = check_tiny([SCENARIOS / f"{n}.toml" for n in RUNTIME_SCENARIOS], out)
    assert report is not None, result.output
    return result, out, report
