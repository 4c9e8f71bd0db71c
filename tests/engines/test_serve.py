"""`parity serve` without starting vLLM: the server's command line from a profile (parsed by
vLLM's own argument parser), what cannot be served, and a server process that dies or never
becomes healthy (EngineError with its log, no process left)."""

import os
import stat

import pytest
from conftest import run_cli

from parity.engines.base import EngineError
from parity.engines.serve import Server, command, flag, serve_problems
from parity.engines.settings import parse_setting


def setting(text):
    s, problems = parse_setting(text, "SETTING")
    assert not problems, problems
    return s


def test_flags():
    assert flag("enforce_eager", True) == ["--enforce-eager"]
    assert flag("enable_prefix_caching", False) == ["--no-enable-prefix-caching"]
    assert flag("hf_overrides", {"head_dtype": "float32"}) == [
        "--hf-overrides",
        '{"head_dtype": "float32"}',
    ]
    assert flag("max_model_len", 256) == ["--max-model-len", "256"]


def test_v1_parity_command_parses_in_vllm_with_the_four_fixes(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    argv, env = command(setting("v1-parity"), "/models/tiny", "/py", "127.0.0.1", 8123)
    assert argv[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and "PYTHONPATH" not in env
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[3:])
    assert args.model == "/models/tiny" and args.port == 8123 and args.host == "127.0.0.1"
    assert args.logprobs_mode == "processed_logprobs"
    assert args.enable_prefix_caching is False and args.async_scheduling is False
    assert args.disable_cascade_attn is True and args.enforce_eager is True
    assert args.hf_overrides == {"head_dtype": "float32"}


def test_parallel_args_pass_through_to_vllm_serve():
    """Multi-GPU: tensor/pipeline/data parallel sizes in a setting reach `vllm serve` as its own
    flags (vLLM does the distribution; parity only passes them on)."""
    from parity.engines.settings import parse_setting

    parsed, problems = parse_setting(
        "v1-parity,tensor_parallel_size=4,pipeline_parallel_size=2,data_parallel_size=2", "SETTING"
    )
    assert not problems
    argv, _ = command(parsed, "/m", "/py", "127.0.0.1", 8000)
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[3:])
    assert (args.tensor_parallel_size, args.pipeline_parallel_size, args.data_parallel_size) == (
        4,
        2,
        2,
    )


def test_v0_command_selects_v0_and_patches_are_refused():
    _, env = command(setting("v0"), "/m", "/v0/python", "127.0.0.1", 1)
    assert env["VLLM_USE_V1"] == "0"
    assert serve_problems(setting("v0"), "SETTING") == []
    problems = serve_problems(setting("v0-fp32head"), "SETTING")
    assert problems and problems[0][1] == "env.PARITY_FP32_HEAD"


def test_serve_cli_bad_input_is_exit_2():
    result = run_cli(["serve", "no-such-profile", "--model", "tiny"])
    assert result.exit_code == 2 and "unknown profile" in result.output
    result = run_cli(["serve", "v0-fp32head", "--model", "nope/nowhere", "--port", "0"])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "PARITY_FP32_HEAD" in out and "--model" in out and "--port" in out


def _gone(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def fake_python(tmp_path, body):
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_server_that_exits_is_an_engine_error_with_its_log(tmp_path):
    python = fake_python(tmp_path, "echo 'ValueError: no such model' >&2; exit 3")
    server = Server(setting("v1-parity"), "/m", python, tmp_path / "serve.log")
    with pytest.raises(EngineError, match=r"exited \(code 3\)") as info:
        server.start(timeout=30)
    assert "no such model" in info.value.log_tail
    assert _gone(server.proc.pid)


def test_server_that_never_gets_healthy_is_stopped(tmp_path):
    # A child that ignores SIGTERM: the group must still be gone (SIGKILL after the grace).
    python = fake_python(tmp_path, "echo listening; (trap '' TERM; sleep 60) & sleep 60")
    server = Server(setting("v1-parity"), "/m", python, tmp_path / "serve.log")
    server.stop = lambda grace=1.0, _stop=server.stop: _stop(grace)
    with pytest.raises(EngineError, match="not healthy after 1s") as info:
        server.start(timeout=1)
    assert "listening" in info.value.log_tail
    assert _gone(server.proc.pid)
