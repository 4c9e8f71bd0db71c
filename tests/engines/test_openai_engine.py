"""The served engine (engine = "openai") against a fake vLLM server: requests as vLLM wants
them, answers parsed into Sequences, configuration read or reported unknown, and a server that
answers garbage, dies or hangs ends as an EngineError with its log (never a hang); scenario
validation of served settings (exit 2 before anything starts)."""

import json
import time

import pytest
from conftest import run_cli
from fake_openai_server import FakeServer

from parity.engines import create
from parity.engines.base import EngineError, SamplingSpec
from parity.engines.openai_config import served_config
from parity.engines.openai_engine import OpenAIEngine
from parity.engines.setting_tables import from_table
from parity.engines.settings import load_profiles, parse_setting

SAMPLING = SamplingSpec(
    temperature=0.7, top_p=0.9, top_k=50, max_tokens=4, seed=100, n=2, logprobs=2, prompt_logprobs=0
)


def engine(url, tmp_path, **table):
    setting, problems = from_table(
        {"engine": "openai", "url": url, **table}, "candidate", "s.toml", load_profiles()
    )
    assert not problems, problems
    return create(
        setting,
        "/models/tiny",
        "python",
        tmp_path / "client.log",
        start_timeout=5,
        request_timeout=3,
    )


def test_generate_sends_vllm_requests_and_parses_answers(tmp_path):
    with FakeServer() as server, engine(server.url, tmp_path) as eng:
        seqs = eng.generate([[1, 2, 3], [4, 5]], SAMPLING)
    assert isinstance(eng, OpenAIEngine)
    bodies = sorted(server.bodies, key=lambda b: b["seed"])
    assert [b["seed"] for b in bodies] == [100, 101]  # prompt i: seed + i
    assert [b["prompt"] for b in bodies] == [[1, 2, 3], [4, 5]]  # token ids, not text
    b = bodies[0]
    assert b["return_tokens_as_token_ids"] is True and b["top_k"] == 50 and b["n"] == 2
    assert b["logprobs"] == 2 and b["prompt_logprobs"] == 0 and b["model"] == "tiny"
    assert b["repetition_penalty"] == 1.0 and b["min_p"] == 0.0  # no generation-config defaults
    assert [(s.prompt_index, s.sample_index) for s in seqs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    s = seqs[1]
    assert s.token_ids == [101, 102, 103, 104][:0] or s.token_ids == [
        (101 + t) % 100 for t in range(4)
    ]
    assert s.logprobs == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    assert s.top_logprobs[0] == {1: -0.1, 999: -5.0}
    assert s.prompt_token_ids == [1, 2, 3] and s.prompt_logprobs == [None, -0.5, -0.5]


def test_top_k_off_is_minus_one_and_no_prompt_logprobs_by_default(tmp_path):
    with FakeServer() as server, engine(server.url, tmp_path) as eng:
        seqs = eng.generate([[1, 2]], SamplingSpec(max_tokens=2, seed=0))
    assert server.bodies[0]["top_k"] == -1 and "prompt_logprobs" not in server.bodies[0]
    assert seqs[0].top_logprobs is None and seqs[0].prompt_logprobs is None


def test_effective_config_unknown_without_server_info(tmp_path):
    with FakeServer() as server, engine(server.url, tmp_path) as eng:
        cfg = eng.effective_config()
    key = cfg["key"]
    assert key["vllm_version"] == "0.32.0" and key["max_model_len"] == 512
    assert key["engine_impl"].startswith("vllm.v1.")  # only V1 exists from 0.11 on
    for name in ("logprobs_mode", "enable_prefix_caching", "async_scheduling", "head_dtype"):
        assert key[name] is None, name  # never guessed
        assert "unknown" in cfg["notes"][name] or "not exposed" in cfg["notes"][name]
    assert "VLLM_SERVER_DEV_MODE=1" in cfg["notes"]["server_info"]
    assert "model.vocab_size" in cfg["not_exposed"]


def test_effective_config_from_server_info():
    info = {
        "vllm_config": {
            "model_config": {
                "dtype": "torch.bfloat16",
                "logprobs_mode": "processed_logprobs",
                "disable_cascade_attn": True,
                "max_model_len": 512,
                "seed": 0,
                "hf_overrides": {"head_dtype": "float32"},
                "enforce_eager": True,
            },
            "cache_config": {"enable_prefix_caching": False, "block_size": 128},
            "scheduler_config": {"async_scheduling": False},
            "device_config": {"device": "cpu"},
        },
        "vllm_env": {"VLLM_USE_V1": True},
    }
    key = served_config({"id": "tiny"}, {"version": "0.32.0"}, info, "http://x")["key"]
    assert key["logprobs_mode"] == "processed_logprobs" and key["head_dtype"] == "float32"
    assert key["enable_prefix_caching"] is False and key["cascade_attention"] == "off"
    assert key["platform"] == "cpu" and key["async_scheduling"] is False
    text = (
        "model='/m', speculative_config=None, dtype=torch.bfloat16, max_seq_len=512, "
        "enforce_eager=True, kv_cache_dtype=auto,  device_config=cpu, seed=0, "
        "enable_prefix_caching=None, chunked_prefill_enabled=False, compilation_config="
        '{"level":0,"splitting_ops":[]}'
    )
    v0 = served_config({"id": "m"}, {"version": "0.8.5.post2"}, {"vllm_config": text}, "u")
    key = v0["key"]
    assert key["engine_impl"] is None and "text only" in v0["notes"]["server_info"]
    assert key["dtype"] == "torch.bfloat16" and key["max_model_len"] == 512
    assert key["enforce_eager"] is True and key["platform"] == "cpu" and key["seed"] == 0
    assert key["enable_prefix_caching"] is None and key["logprobs_mode"] is None
    assert key["enable_chunked_prefill"] is False


def test_api_key_comes_from_the_named_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "s3cret")
    with FakeServer(api_key="s3cret") as server:
        with engine(server.url, tmp_path, api_key_env="FAKE_KEY") as eng:
            assert eng.generate([[1]], SamplingSpec(max_tokens=1))
        with pytest.raises(EngineError, match="HTTP 401.*api_key_env"):
            engine(server.url, tmp_path).start()


@pytest.mark.parametrize(
    "mode, message",
    [
        ("garbage", "answered garbage, not JSON"),
        ("bad_shape", "answered garbage"),
        ("die", "broke off the connection"),
        ("hang", "did not answer within|unanswered after"),
        ("error", "HTTP 500"),
    ],
)
def test_misbehaving_server_is_an_engine_error_with_its_log(tmp_path, mode, message):
    log = tmp_path / "server.log"
    with FakeServer(mode, log_path=log) as server:
        eng = engine(server.url, tmp_path, server_log=str(log))
        eng.start()
        t0 = time.monotonic()
        with pytest.raises(EngineError, match=message) as info:
            eng.generate([[1, 2]] * 3, SamplingSpec(max_tokens=2))
        assert time.monotonic() - t0 < 10  # request_timeout 3 s: never a hang
    assert "fake-vllm:" in info.value.log_tail  # the server's last log lines


def test_unreachable_server_fails_to_start(tmp_path):
    from parity.engines.serve import free_port

    eng = engine(f"http://127.0.0.1:{free_port()}", tmp_path)
    eng.start_timeout = 1
    with pytest.raises(EngineError, match="not healthy after"):
        eng.start()
    assert "ERROR" in (tmp_path / "client.log").read_text()


def test_nothing_listening_is_a_clear_error_at_once(tmp_path, monkeypatch):
    """A URL where nothing listens refuses every try: an error after the grace, naming the URL
    and the fix, instead of waiting the whole start timeout (600 s by default)."""
    from parity.engines.serve import free_port

    monkeypatch.setenv("PARITY_CONNECT_GRACE", "1")
    eng = engine(f"http://127.0.0.1:{free_port()}", tmp_path)
    eng.start_timeout = 600
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="nothing listens at .*refused on every try") as info:
        eng.start()
    assert time.monotonic() - t0 < 5
    assert "parity serve" in str(info.value) and "PARITY_CONNECT_GRACE" in str(info.value)


def test_default_connect_grace(tmp_path, monkeypatch):
    monkeypatch.delenv("PARITY_CONNECT_GRACE", raising=False)
    assert engine("http://127.0.0.1:1", tmp_path).refused_grace == 10.0


def test_served_setting_validation(monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    profiles = load_profiles()
    bad = {
        "engine": "openai",
        "url": "ftp://x",
        "api_key_env": "NOPE_KEY",
        "engine_args": {"enforce_eager": True},
        "profile": "v1-parity",
    }
    setting, problems = from_table(bad, "candidate", "s.toml", profiles)
    fields = {f for _, f, _ in problems}
    assert setting is None
    assert fields == {
        "candidate.url",
        "candidate.api_key_env",
        "candidate.engine_args",
        "candidate.profile",
    }
    text = " ".join(m for *_, m in problems)
    assert "scheme must be http" in text and "$NOPE_KEY is not set" in text
    assert "parity serve" in text  # in-process args are refused, with where to put them
    for url, why in (
        ("http://", "names no host"),
        ("http://h:99999", "not a URL"),
        ("http://u:p@h:1", "base URL only"),
        (3, "base URL"),
    ):
        _, problems = from_table({"engine": "openai", "url": url}, "candidate", "s", profiles)
        assert why in problems[0][2], (url, problems)
    _, problems = from_table({"engine": "openai"}, "candidate", "s", profiles)
    assert problems[0][1] == "candidate.url"
    _, problems = from_table({"engine": "tgi"}, "candidate", "s", profiles)
    assert problems[0][1] == "candidate.engine"
    setting, problems = from_table({"url": "http://127.0.0.1:8000/"}, "candidate", "s", profiles)
    assert not problems and setting.engine == "openai" and setting.url == "http://127.0.0.1:8000"
    # --candidate URL names a served engine
    setting, problems = from_table(
        {"profile": "v1-parity"}, "candidate", "s", profiles, override="http://127.0.0.1:9/"
    )
    assert not problems and setting.url == "http://127.0.0.1:9"
    # --candidate PROFILE replaces a served table with an in-process engine
    setting, problems = from_table(
        {"engine": "openai", "url": "http://h:1"}, "candidate", "s", profiles, override="v1-parity"
    )
    assert not problems and setting.engine == "vllm" and setting.profile == "v1-parity"
    # in-process settings keep their identity key
    assert parse_setting("v1-parity", "x")[0].key() == parse_setting("v1-parity", "x")[0].key()
    assert "url" not in parse_setting("v1-parity", "x")[0].to_dict()


def write(path, body):
    path.write_text(body)
    return path


SCENARIO = """name = "{name}"
category = "{category}"
{extra}
[prompts]
items = ["What is 2 + 3?", "What is 7 + 5?"]

[sampling]
temperature = 0.7
top_p = 0.9
max_tokens = 4
seed = 1

[candidate]
{candidate}
"""


def test_categories_that_need_more_than_generation_are_refused(tmp_path, tiny_model):
    wu = write(
        tmp_path / "wu.toml",
        SCENARIO.format(
            name="wu",
            category="weight_update",
            extra='probe = "inflight"\n',
            candidate='engine = "openai"\nurl = "http://127.0.0.1:1"',
        ),
    )
    inplace = write(
        tmp_path / "inplace.toml",
        SCENARIO.format(
            name="inplace",
            category="weight_update",
            extra='probe = "takes_effect"\nupdate = { via = "inplace" }\n',
            candidate='engine = "openai"\nurl = "http://127.0.0.1:1"',
        ),
    )
    pc = write(
        tmp_path / "pc.toml",
        SCENARIO.format(
            name="pc",
            category="runtime",
            extra='probe = "prefix_cache"\n',
            candidate='engine = "openai"\nurl = "http://127.0.0.1:1"',
        ),
    )
    bad = write(
        tmp_path / "bad.toml",
        SCENARIO.format(
            name="bad",
            category="logprobs",
            extra="",
            candidate='engine = "openai"\nurl = "http://127.0.0.1:1"\nenv = "v0"',
        ),
    )
    result = run_cli(
        ["check", str(wu), str(inplace), str(pc), str(bad), "--model", "tiny", "--dry-run"]
    )
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "the inflight probe updates after a given number of tokens" in out
    assert "update.via = 'inplace' writes into the live parameters" in out
    assert "prefix_cache probe resets" in out and "candidate.env" in out


def test_dying_server_is_unresolved_with_its_log_lines(tmp_path, tiny_model):
    """`parity check` against a server that dies mid-request: exit 125, the scenario
    unresolved, the server's last log lines in its message; the dry run starts nothing."""
    log = tmp_path / "server.log"
    with FakeServer("die", log_path=log) as server:
        sc = write(
            tmp_path / "served.toml",
            SCENARIO.format(
                name="served",
                category="logprobs",
                extra="",
                candidate=f'engine = "openai"\nurl = "{server.url}"\nserver_log = "{log}"',
            ),
        )
        dry = run_cli(["check", str(sc), "--model", "tiny", "--dry-run"])
        assert dry.exit_code == 0 and not server.bodies, dry.output
        assert f"served {server.url}" in dry.output
        out = tmp_path / "out"
        result = run_cli(
            ["check", str(sc), "--model", "tiny", "--output", str(out), "--request-timeout", "5"]
        )
    assert result.exit_code == 125, result.output
    report = json.loads((out / "report.json").read_text())
    verdict = report["scenarios"][0]["verdict"]
    assert verdict["outcome"] == "unresolved" and verdict["diagnosis"] == "engine_failed"
    assert "broke off the connection" in verdict["message"]
    assert "fake-vllm:" in report["engines"][0]["error"]  # the server's last log lines
    assert "fake-vllm:" in (out / "logs" / report["engines"][0]["log"].split("/")[-1]).read_text()


def test_check_against_a_served_engine_writes_the_whole_report(tmp_path, tiny_model):
    """End to end without vLLM: `parity check` judges what a (fake) server sampled, and the
    report holds the served engine's setting and effective config; identity keys no endpoint
    exposes are shown, not compared."""
    with FakeServer() as server:
        sc = write(
            tmp_path / "served.toml",
            SCENARIO.format(
                name="served",
                category="logprobs",
                extra="",
                candidate=f'engine = "openai"\nurl = "{server.url}"',
            ),
        )
        out = tmp_path / "out"
        result = run_cli(["check", str(sc), "--model", "tiny", "--output", str(out)])
    assert result.exit_code in (1, 125), result.output  # fake logprobs: not a pass
    report = json.loads((out / "report.json").read_text())
    engine_rec = report["engines"][0]
    assert engine_rec["setting"]["engine"] == "openai"
    assert engine_rec["setting"]["url"] == server.url
    assert engine_rec["effective_config"]["key"]["vllm_version"] == "0.32.0"
    s = report["scenarios"][0]
    assert s["verdict"]["outcome"] != "unresolved", s["verdict"]["message"]
    assert not any(f["name"].startswith("identity.") for f in s["verdict"]["findings"])
    assert (out / "tokens.parquet").exists()
    assert f"served `{server.url}`" in (out / "report.md").read_text()
