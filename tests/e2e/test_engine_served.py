"""Real vLLM OpenAI-compatible servers on the tiny model (CPU, 127.0.0.1, a free port), started
as `parity serve` does, driven by `parity check` over HTTP: the logprobs check passes the fixed
setting and fails the raw-logprobs control with the same diagnosis as in process; a server
that went away is unresolved; weight updates over HTTP (takes_effect and its controls, the
tied-head reload bug reported); every server process is gone at the end."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SCENARIOS, run_cli


def _gone(pgid) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def served_scenario(src: Path, dst: Path, url: str, log: Path) -> Path:
    """The shipped scenario with its [candidate] replaced by the served engine at `url`."""
    text = src.read_text().split("[candidate]")[0]
    dst.write_text(text + f'[candidate]\nengine = "openai"\nurl = "{url}"\nserver_log = "{log}"\n')
    return dst


@pytest.fixture(scope="module")
def v1_servers(tiny_model, tmp_path_factory):
    """Two V1 servers at once: v1-parity through the library (parity.engines.serve.Server) and
    v1-defaults through the `parity serve` command (a subprocess, stopped with SIGTERM)."""
    from parity.engines.serve import Server, free_port
    from parity.engines.settings import parse_setting

    tmp = tmp_path_factory.mktemp("served")
    t0 = time.perf_counter()
    port = free_port()
    cli_log = tmp / "defaults.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "parity.cli",
            "serve",
            "v1-defaults",
            "--model",
            "tiny",
            "--port",
            str(port),
            "--log",
            str(cli_log),
            "--start-timeout",
            "300",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp,
        env=env,
        start_new_session=True,
    )
    # Tensor parallel over two CPU workers, as a multi-GPU user passes it: vLLM's automatic
    # thread binding wants a NUMA node per worker, so each worker is bound to one core.
    cores = sorted(os.sched_getaffinity(0))[:2]
    parity_setting, problems = parse_setting(
        "v1-parity,tensor_parallel_size=2,env.VLLM_CPU_OMP_THREADS_BIND="
        + "|".join(map(str, cores)),
        "test",
    )
    assert not problems, problems
    server = Server(parity_setting, str(tiny_model), sys.executable, tmp / "parity.log")
    try:
        server.start(timeout=300)
        url = cli.stdout.readline().strip()  # printed once healthy
        assert url == f"http://127.0.0.1:{port}", (
            url,
            cli.stderr.read() if cli.poll() is not None else "",
        )
        info = {
            "tmp": tmp,
            "parity": (server.url, server.log_path),
            "defaults": (url, cli_log),
            "start_s": time.perf_counter() - t0,
            "server": server,
            "cli": cli,
        }
        yield info
    finally:
        server.stop()
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGTERM)
        try:
            cli.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
        assert _gone(server.proc.pid)


@pytest.fixture(scope="module")
def served_run(v1_servers):
    tmp = v1_servers["tmp"]
    files = [
        served_scenario(
            SCENARIOS / "logprobs-processed.toml", tmp / "processed.toml", *v1_servers["parity"]
        ),
        served_scenario(
            SCENARIOS / "logprobs-raw-control.toml", tmp / "raw.toml", *v1_servers["defaults"]
        ),
    ]
    out = tmp / "report"
    t0 = time.perf_counter()
    result = run_cli(["check", *map(str, files), "--model", "tiny", "--output", str(out)])
    wall = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text())
    return result, report, wall


def by_name(report):
    return {s["name"]: s for s in report["scenarios"]}


def test_over_http_processed_passes_raw_control_fails(served_run):
    result, report, _ = served_run
    assert result.exit_code == 0, result.output
    ok = by_name(report)["logprobs-processed"]
    assert ok["verdict"]["outcome"] == "pass", ok["verdict"]["message"]
    control = by_name(report)["logprobs-raw-control"]
    assert control["verdict"]["outcome"] == "fail"
    assert control["verdict"]["diagnosis"] == "raw_logprobs" and control["as_expected"]
    assert "logprobs_mode=processed_logprobs" in control["verdict"]["message"]
    m = control["metrics"]
    assert m["vs_raw"]["abs_dlogp_mean"] * 2 < m["vs_processed"]["abs_dlogp_mean"]


def test_served_effective_config_is_read_from_the_server(v1_servers, served_run):
    _, report, _ = served_run
    modes = {}
    for e in report["engines"]:
        key = e["effective_config"]["key"]
        assert e["setting"]["engine"] == "openai"
        assert key["engine_impl"].startswith("vllm.v1.") and key["vllm_version"]
        assert key["platform"] == "cpu" and key["max_model_len"]
        modes[e["setting"]["url"]] = (
            key["logprobs_mode"],
            key["enable_prefix_caching"],
            key["head_dtype"],
        )
    assert sorted(modes.values()) == [
        ("processed_logprobs", False, "float32"),
        ("raw_logprobs", True, "torch.bfloat16"),
    ]
    tp = {
        e["setting"]["url"]: e["effective_config"]["key"]["tensor_parallel_size"]
        for e in report["engines"]
    }
    assert tp == {v1_servers["parity"][0]: 2, v1_servers["defaults"][0]: 1}


def test_candidate_url_option_over_a_shipped_scenario(v1_servers, tmp_path):
    """`parity check SCENARIO --candidate URL`: the shipped file unchanged, its candidate
    replaced by the server (here tensor parallel over two workers): the fixed setting passes."""
    url, _ = v1_servers["parity"]
    out = tmp_path / "report"
    result = run_cli(
        [
            "check",
            str(SCENARIOS / "logprobs-processed.toml"),
            "--model",
            "tiny",
            "--candidate",
            url,
            "--output",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    s = report["scenarios"][0]
    assert s["verdict"]["outcome"] == "pass" and s["provenance"]["candidate"] == "cli"
    (engine,) = report["engines"]
    assert engine["setting"]["url"] == url
    assert engine["effective_config"]["key"]["tensor_parallel_size"] == 2


def test_a_server_that_went_away_is_unresolved_with_its_log(v1_servers, served_run):
    """Stop the v1-defaults server (`parity serve` gets SIGTERM and stops its vLLM): the
    command exits 0 with no process left, and a check against that URL is unresolved (125)
    with the server's last log lines, within the start timeout."""
    cli = v1_servers["cli"]
    url, log = v1_servers["defaults"]
    os.killpg(cli.pid, signal.SIGTERM)
    assert cli.wait(timeout=60) == 0, cli.stderr.read()
    stderr = cli.stderr.read()
    pid = int(re.search(r"\(pid\s+(\d+)\)", stderr).group(1))
    assert _gone(pid), "the vllm server outlived parity serve"
    tmp = v1_servers["tmp"]
    sc = served_scenario(SCENARIOS / "logprobs-raw-control.toml", tmp / "gone.toml", url, log)
    out = tmp / "gone"
    t0 = time.perf_counter()
    result = run_cli(
        ["check", str(sc), "--model", "tiny", "--output", str(out), "--start-timeout", "5"]
    )
    assert time.perf_counter() - t0 < 120
    assert result.exit_code == 125, result.output
    report = json.loads((out / "report.json").read_text())
    verdict = report["scenarios"][0]["verdict"]
    assert verdict["outcome"] == "unresolved" and "not healthy" in verdict["message"]
    assert "--- server log" in Path(report["engines"][0]["log"]).read_text()


def test_v0_server_from_its_environment(tiny_model, tmp_path):
    """V0 0.8.5's own server, run by the 0.8.5 environment's Python with VLLM_USE_V1=0: its
    sampled logprobs over HTTP are processed (V0's sampler), as in process; what 0.8.5 does
    not expose (no JSON /server_info: logprobs mode, engine class) is reported unknown."""
    from parity.engines.serve import Server
    from parity.engines.settings import parse_setting
    from parity.setup.envs import python_for

    setting, _ = parse_setting("v0", "test")
    log = tmp_path / "v0.log"
    server = Server(setting, str(tiny_model), python_for("v0", lambda m: None), log)
    t0 = time.perf_counter()
    with server:
        start_s = time.perf_counter() - t0
        sc = served_scenario(
            SCENARIOS / "logprobs-processed.toml", tmp_path / "v0.toml", server.url, log
        )
        out = tmp_path / "report"
        result = run_cli(["check", str(sc), "--model", "tiny", "--output", str(out)])
        # rl: V1-parity in process against the served V0, which runs second and is
        # teacher-forced on V1's tokens through its prompt logprobs over HTTP.
        rl = tmp_path / "rl.toml"
        rl.write_text(
            "direct = true\n"
            + (SCENARIOS / "rl-v0-vs-v1-parity.toml")
            .read_text()
            .replace(
                '[baseline]\nprofile = "v0"', f'[baseline]\nengine = "openai"\nurl = "{server.url}"'
            )
        )
        rl_out = tmp_path / "rl"
        rl_result = run_cli(["check", str(rl), "--model", "tiny", "--output", str(rl_out)])
    assert _gone(server.proc.pid)
    rl_report = json.loads((rl_out / "report.json").read_text())
    rl_sc = rl_report["scenarios"][0]
    assert rl_sc["verdict"]["outcome"] == "pass", (rl_result.output, rl_sc["verdict"])
    direct = rl_sc["metrics"]["direct"]
    assert direct["scorer"] == "baseline" and direct["n_tokens"] > 0
    assert direct["scorer_semantics"] == "processed"  # V0's prompt logprobs, as in process
    report = json.loads((out / "report.json").read_text())
    s = report["scenarios"][0]
    assert s["verdict"]["outcome"] in ("pass", "fail"), (result.output, start_s)
    m = s["metrics"]
    assert m["vs_processed"]["abs_dlogp_mean"] * 2 < m["vs_raw"]["abs_dlogp_mean"]
    key = report["engines"][0]["effective_config"]["key"]
    assert key["vllm_version"].startswith("0.8.5")
    assert key["logprobs_mode"] is None and key["engine_impl"] is None  # unknown, not guessed


def test_weight_update_over_http(tiny_model, tmp_path):
    """A V1 server on the untied tiny model (fp32, prefix caching on, as the shipped update
    scenarios), updated over HTTP through vLLM's RL endpoints (/pause, /collective_rpc
    reload_weights, /resume): takes_effect passes (the served logprobs move to the perturbed
    checkpoint), and its controls fail with their in-process diagnoses: a pushed checkpoint
    with layer 1 left old (stale_layers) and a prefix cache kept across the update
    (stale_prefix_cache). Untied: a plain `vllm serve` has no PARITY_RELOAD_REPROCESS, and
    vLLM-CPU 0.32's reload leaves a tied head on the old weights (docs/measurements.md#tied-lm-head-reload)."""
    from parity.engines.serve import Server
    from parity.engines.settings import parse_setting

    setting, problems = parse_setting("v1-parity,dtype=float32,enable_prefix_caching=true", "test")
    assert not problems, problems
    log = tmp_path / "server.log"
    server = Server(setting, str(tiny_model), sys.executable, log)
    names = ("update-takes-effect", "update-stale-layer-control", "update-stale-cache-control")
    t0 = time.perf_counter()
    with server:
        start_s = time.perf_counter() - t0
        files = [
            served_scenario(SCENARIOS / f"{n}.toml", tmp_path / f"{n}.toml", server.url, log)
            for n in names
        ]
        out = tmp_path / "report"
        t1 = time.perf_counter()
        result = run_cli(["check", *map(str, files), "--model", "tiny", "--output", str(out)])
        check_s = time.perf_counter() - t1
    assert _gone(server.proc.pid)
    report = json.loads((out / "report.json").read_text())
    got = by_name(report)
    print(f"\nserver start {start_s:.1f} s, parity check {check_s:.1f} s")
    for n in names:
        m = got[n]["metrics"]
        print(
            n,
            got[n]["verdict"]["outcome"],
            got[n]["verdict"]["diagnosis"],
            {
                k: m.get(k)
                for k in (
                    "abs_dlogp_before_vs_old",
                    "abs_dlogp_after_vs_old",
                    "abs_dlogp_after_vs_new",
                    "abs_dlogp_after_vs_stale",
                )
            },
            {
                k: m["update"].get(k)
                for k in (
                    "latency_s",
                    "load_s",
                    "pause_s",
                    "resume_s",
                    "evidence_s",
                    "checksums",
                    "endpoints",
                )
            },
        )
    assert result.exit_code == 0, result.output  # every scenario as expected
    ok = got["update-takes-effect"]
    assert ok["verdict"]["outcome"] == "pass", ok["verdict"]["message"]
    assert ok["metrics"]["abs_dlogp_after_vs_new"] < 0.05 < ok["metrics"]["abs_dlogp_after_vs_old"]
    assert ok["metrics"]["update"]["via"] == "reload"
    layer = got["update-stale-layer-control"]
    assert layer["verdict"]["diagnosis"] == "stale_layers" and layer["as_expected"]
    cache = got["update-stale-cache-control"]
    assert cache["verdict"]["diagnosis"] == "stale_prefix_cache" and cache["as_expected"]
    sums = ok["metrics"]["update"]["checksums"]  # /weight_checker: parameters, not kernels
    assert sums["total"] > 0 and sums["changed"] > 0, sums
    rl = report["engines"][0]["effective_config"]["rl_endpoints"]
    assert rl["update_from_disk"] is True
    assert {"/pause", "/resume", "/collective_rpc", "/update_weight_version"} <= set(rl["present"])
    assert "RL endpoints (GET /openapi.json)" in (out / "report.md").read_text()


def test_weight_update_over_http_reports_the_tied_head_bug(tmp_path):
    """The same update on the tied tiny model: a plain `vllm serve` has no parity workaround
    (PARITY_RELOAD_REPROCESS), so vLLM-CPU 0.32's reload leaves the tied head on the old
    weights and the verdict names it (stale_lm_head), as the in-process run without the
    workaround does (update-reload-v1-stale-head)."""
    from parity.engines.serve import Server
    from parity.engines.settings import parse_setting
    from parity.setup.models import build_model

    model = build_model("tiny-tied", log=lambda m: None)
    setting, _ = parse_setting("v1-parity,dtype=float32,enable_prefix_caching=true", "test")
    log = tmp_path / "server.log"
    server = Server(setting, str(model), sys.executable, log)
    with server:
        sc = served_scenario(
            SCENARIOS / "update-reload-v1-stale-head.toml", tmp_path / "tied.toml", server.url, log
        )
        out = tmp_path / "report"
        result = run_cli(["check", str(sc), "--model", "tiny-tied", "--output", str(out)])
    assert _gone(server.proc.pid)
    s = json.loads((out / "report.json").read_text())["scenarios"][0]
    print(
        "\ntied:",
        s["verdict"]["outcome"],
        s["verdict"]["diagnosis"],
        s["metrics"].get("abs_dlogp_after_vs_new"),
        s["metrics"].get("abs_dlogp_after_vs_old"),
    )
    assert result.exit_code == 0, result.output
    assert s["verdict"]["diagnosis"] == "stale_lm_head" and s["as_expected"], s["verdict"]
    assert "ParallelLMHead: Failed to load weights" in log.read_text()
