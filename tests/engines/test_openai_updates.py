"""Weight updates of a served engine over HTTP against a fake vLLM server: the calls vLLM 0.32's
RL endpoints expect, in order; which endpoints the server has, read from its OpenAPI schema
into the effective config; a server lacking one, or one that fails, is an EngineError naming
the endpoint (never a crash, never a server left paused); what cannot run over HTTP is refused
at validation."""

import json

import pytest
from conftest import run_cli
from fake_openai_server import FakeServer

from parity.engines import create
from parity.engines.base import EngineError
from parity.engines.openai_updates import (
    NEEDED,
    RL_ENDPOINTS,
    checksum_change,
    endpoints_from_schema,
)
from parity.engines.setting_tables import from_table
from parity.engines.settings import load_profiles

ALL = set(RL_ENDPOINTS)


def engine(url, tmp_path):
    setting, problems = from_table(
        {"engine": "openai", "url": url}, "candidate", "s.toml", load_profiles()
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


def paths(calls):
    return [c[1].split("?")[0] for c in calls]


def test_update_calls_the_rl_endpoints_in_order(tmp_path):
    with FakeServer(rl=ALL) as server, engine(server.url, tmp_path) as eng:
        rec = eng.update_weights("/ckpt/new", mode="keep", clear_cache=True)
        rec2 = eng.update_weights("/ckpt/old", clear_cache=False)
        rl = eng.effective_config()["rl_endpoints"]
    one = ["/pause", "/weight_checker", "/collective_rpc", "/weight_checker"]
    assert paths(server.calls) == [
        *one,
        "/reset_prefix_cache",
        "/update_weight_version",
        "/resume",
        "/weight_info",
        *one,
        "/update_weight_version",
        "/resume",
        "/weight_info",
    ]
    pause = server.calls[0][1]
    assert "mode=keep" in pause and "clear_cache=true" in pause
    assert "clear_cache=false" in server.calls[8][1]
    assert server.calls[2][2] == {
        "method": "reload_weights",
        "kwargs": {"weights_path": "/ckpt/new"},
    }
    assert server.calls[5][2] == {"new_version": "1"} and not server.paused
    # The workers' checksums before and after the reload: the head changed, the norm did not.
    assert rec["checksums"] == {"total": 2, "changed": 1, "unchanged": ["norm.weight"]}
    assert rec["evidence_s"] >= 0 and "/weight_checker" in rec["endpoints"]
    assert rec["version_before"] == 0 and rec["version"] == 1 and rec["version_reported"] == "1"
    assert rec["cache_cleared"] and rec["cache_reset"] is True
    assert rec2["version"] == 2 and eng.checkpoint == "/ckpt/old" and eng.weight_version == 2
    for k in ("pause_s", "load_s", "resume_s", "latency_s"):
        assert rec[k] >= 0
    assert rec["latency_s"] >= rec["load_s"]
    assert rl["update_from_disk"] is True and rl["missing"] == [] and rl["source"]


def test_effective_config_lists_what_the_server_lacks(tmp_path):
    have = {"/pause", "/resume", "/collective_rpc"}
    with FakeServer(rl=have) as server, engine(server.url, tmp_path) as eng:
        rl = eng.effective_config()["rl_endpoints"]
        rec = eng.update_weights("/ckpt/new", clear_cache=True)
    assert sorted(rl["present"]) == sorted(have)
    assert set(rl["missing"]) == ALL - have and "/update_weights" in rl["missing"]
    assert rl["update_from_disk"] is True
    # Optional endpoints are skipped, not called: the update still goes through.
    assert paths(server.calls) == ["/pause", "/collective_rpc", "/resume"]
    assert rec["version"] == 1 and "cache_reset" not in rec and rec["version_reported"] is None


@pytest.mark.parametrize("missing", NEEDED)
def test_a_server_lacking_a_needed_endpoint_is_refused_before_any_call(tmp_path, missing):
    with FakeServer(rl=ALL - {missing}) as server, engine(server.url, tmp_path) as eng:
        rl = eng.effective_config()["rl_endpoints"]
        with pytest.raises(EngineError) as err:
            eng.update_weights("/ckpt/new")
    assert rl["update_from_disk"] is False and missing in rl["note"]
    assert f"lacks {missing}" in str(err.value) and "VLLM_SERVER_DEV_MODE=1" in str(err.value)
    assert server.calls == [] and eng.weight_version == 0 and eng.checkpoint is None


def test_no_schema_no_endpoints_is_an_error_naming_the_first_call(tmp_path):
    """A server without dev mode: no /openapi.json here, every RL path 404."""
    with FakeServer() as server, engine(server.url, tmp_path) as eng:
        rl = eng.effective_config()["rl_endpoints"]
        with pytest.raises(EngineError) as err:
            eng.update_weights("/ckpt/new")
    assert rl["present"] is None and rl["update_from_disk"] is None and "unknown" in rl["note"]
    assert "POST /pause: the server lacks this endpoint" in str(err.value)


def test_no_schema_but_endpoints_are_found_when_called(tmp_path):
    with FakeServer(rl=ALL, schema=False) as server, engine(server.url, tmp_path) as eng:
        assert eng.effective_config()["rl_endpoints"]["present"] is None
        rec = eng.update_weights("/ckpt/new", clear_cache=True)
    assert rec["version"] == 1 and "/collective_rpc" in rec["endpoints"]


@pytest.mark.parametrize("failing", ["/collective_rpc", "/update_weight_version"])
def test_an_endpoint_error_is_an_engine_error_and_the_server_resumes(tmp_path, failing):
    with FakeServer(rl=ALL, rl_fail={failing: 500}) as server, engine(server.url, tmp_path) as eng:
        with pytest.raises(EngineError) as err:
            eng.update_weights("/ckpt/new")
    assert f"POST {failing}: HTTP 500" in str(err.value) and f"{failing} failed" in str(err.value)
    assert paths(server.calls)[-1] == "/resume" and not server.paused
    assert eng.weight_version == 0 and eng.checkpoint is None  # nothing committed


def test_a_failing_weight_checker_is_evidence_not_a_failed_update(tmp_path):
    with (
        FakeServer(rl=ALL, rl_fail={"/weight_checker": 500}) as server,
        engine(server.url, tmp_path) as eng,
    ):
        rec = eng.update_weights("/ckpt/new")
    assert rec["version"] == 1 and "HTTP 500" in rec["checksums"]["error"]
    assert paths(server.calls).count("/weight_checker") == 1  # not asked again after the load
    assert checksum_change({"a": "1"}, {"a": "1", "b": "2"}) == {
        "total": 2,
        "changed": 1,
        "unchanged": ["a"],
    }


def test_a_failing_pause_is_an_error_without_resume(tmp_path):
    with FakeServer(rl=ALL, rl_fail={"/pause": 400}) as server, engine(server.url, tmp_path) as eng:
        with pytest.raises(
            EngineError, match=r"POST /pause\?mode=keep&clear_cache=false: HTTP 400"
        ):
            eng.update_weights("/ckpt/new")
    assert paths(server.calls) == ["/pause"]


def test_inplace_has_no_endpoint(tmp_path):
    with FakeServer(rl=ALL) as server, engine(server.url, tmp_path) as eng:
        with pytest.raises(EngineError, match="only 'reload'"):
            eng.update_weights("/ckpt/new", via="inplace")
    assert server.calls == []


def test_endpoints_from_schema():
    schema = {"paths": {"/pause": {"post": {}}, "/weight_info": {"post": {}}}}
    got = endpoints_from_schema(schema)
    assert got["/pause"] is True and got["/weight_info"] is False  # wrong method: absent
    assert endpoints_from_schema({"no": "paths"}) is None and endpoints_from_schema(None) is None


SCENARIO = """name = "wu"
category = "weight_update"
probe = "takes_effect"
update = {{ scale = 1.0, seed = 1, via = "reload", clear_cache = true }}

[prompts]
source = "arithmetic:2"

[sampling]
temperature = 1.0
max_tokens = 4
seed = 7

[candidate]
engine = "openai"
url = "{url}"
"""


@pytest.mark.parametrize("rl", [ALL - {"/collective_rpc"}, None])
def test_check_on_a_server_lacking_an_endpoint_is_unresolved_naming_it(tmp_path, tiny_model, rl):
    with FakeServer(rl=rl) as server:
        sc = tmp_path / "wu.toml"
        sc.write_text(SCENARIO.format(url=server.url))
        dry = run_cli(["check", str(sc), "--model", "tiny", "--dry-run"])
        assert dry.exit_code == 0, dry.output  # takes_effect is not refused over HTTP
        out = tmp_path / "out"
        result = run_cli(["check", str(sc), "--model", "tiny", "--output", str(out)])
    assert result.exit_code == 125, result.output
    report = json.loads((out / "report.json").read_text())
    verdict = report["scenarios"][0]["verdict"]
    assert verdict["outcome"] == "unresolved"
    named = "/collective_rpc" if rl else "/pause"
    assert (
        f"lacks {named}" in verdict["message"] or f"{named}: the server lacks" in verdict["message"]
    ), verdict["message"]
    assert not server.paused
    md = (out / "report.md").read_text()
    assert "RL endpoints (GET /openapi.json)" in md
    if rl:
        assert "missing: /collective_rpc" in md


def test_check_on_a_server_with_the_endpoints_runs_the_probe(tmp_path, tiny_model):
    """The probe's engine work over HTTP end to end (fake logprobs, so the verdict is a
    failure, not a crash): reload the perturbed checkpoint, then the original back."""
    with FakeServer(rl=ALL) as server:
        sc = tmp_path / "wu.toml"
        sc.write_text(SCENARIO.format(url=server.url))
        out = tmp_path / "out"
        result = run_cli(["check", str(sc), "--model", "tiny", "--output", str(out)])
    report = json.loads((out / "report.json").read_text())
    s = report["scenarios"][0]
    assert s["verdict"]["outcome"] != "unresolved", (result.output, s["verdict"]["message"])
    loads = [c[2]["kwargs"]["weights_path"] for c in server.calls if c[1] == "/collective_rpc"]
    assert len(loads) == 2 and loads[1] == str(tiny_model) and loads[0] != loads[1]
    assert s["metrics"]["update"]["via"] == "reload"
    assert report["engines"][0]["effective_config"]["rl_endpoints"]["update_from_disk"]
