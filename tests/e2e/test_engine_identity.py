"""The real-engine tests of test_identity.py's subject (The model-identity rule (parity.engines.identity): `same`, each rule with a case that must be unequal;)."""

import json

import pytest

from parity.engines import identity
from parity.engines.identity import compare
from parity.engines.identity_drift import drift


def test_check_diagnoses_drift_before_starting_the_v0_engine(copies, tmp_path):
    """`parity check` with a transformers-5-only checkpoint on the V0 profile: the verdict is
    config_drift with the fix, and no engine was started (V0 would run rope_theta 10000 and
    fall back to float16)."""
    from conftest import run_cli

    scenario = tmp_path / "drift.toml"
    scenario.write_text(
        'name = "drift"\ncategory = "logprobs"\nexpect = "fail"\n'
        'expect_diagnosis = "config_drift"\n[prompts]\nsource = "arithmetic:4"\n'
        '[sampling]\ntemperature = 0.7\n[candidate]\nprofile = "v0"\n'
    )
    out = tmp_path / "out"
    result = run_cli(["check", str(scenario), "--model", str(copies["t5"]), "--output", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert result.exit_code == 0, result.output
    verdict = report["scenarios"][0]["verdict"]
    assert verdict["outcome"] == "fail" and verdict["diagnosis"] == "config_drift"
    assert "rope_theta" in verdict["message"] and "torch_dtype" in verdict["message"]
    (engine,) = report["engines"]
    assert engine["skipped"].startswith("config drift") and not engine.get("worker_pgid")


@pytest.fixture(scope="module")
def v0_python():
    """The V0 environment's interpreter (transformers 4.51.3): built once into the user's
    cache (~3 min, ~6 GB), reused after. Reading model facts there starts no engine."""
    from parity.setup import envs, envspecs

    return str(envs.ensure_env(envspecs.get_spec("v0"), log=lambda m: None))


@pytest.fixture(scope="module")
def v0_reads(copies, v0_python, tmp_path_factory):
    from parity.engines.engine_checks import read_model_facts

    log = tmp_path_factory.mktemp("identity-logs") / "facts.log"
    return {name: read_model_facts(v0_python, path, log) for name, path in copies.items()}


def test_the_warm_v0_validator_reads_the_facts_the_one_shot_way_does(
    copies, v0_python, tmp_path, monkeypatch
):
    """A run reads each checkpoint through its environment's warm validator (vLLM imported, one
    process fewer before the engines start): the same facts as a fresh interpreter's; and the
    answer is kept (check_cache), so the next run asks no process at all."""
    from parity.engines import check_cache, engine_checks

    fresh = engine_checks._read_facts(v0_python, copies["t5"], tmp_path / "fresh.log", 180)
    engine_checks.warm_validator(v0_python, tmp_path / "validate.log")
    try:
        warm = engine_checks._WARM[v0_python]
        got = engine_checks._read_facts(v0_python, copies["t5"], tmp_path / "warm.log", 180)
        assert warm.ready and engine_checks._WARM[v0_python] is warm  # it answered
    finally:
        engine_checks.close_warm()
    assert got == fresh and got["model.rope_theta"] == 10000.0
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    assert engine_checks.read_model_facts(v0_python, copies["t5"], tmp_path / "log") == fresh
    assert check_cache.get("facts", v0_python, str(copies["t5"]), "facts") == fresh
    assert not engine_checks.needs_validator(v0_python, [], [str(copies["t5"])])


def test_v0_env_reads_the_portable_tiny_model_as_the_trainer_does(copies, v0_reads):
    old, trainer = v0_reads["tiny"], identity.trainer_facts(copies["tiny"])
    assert old["transformers_version"] == "4.51.3" and old["errors"] == {}
    assert {r["status"] for r in compare(trainer, old)} == {"same"}
    assert drift(trainer, old, "v0", old["transformers_version"]) == []


def test_v0_env_drifts_on_a_transformers_5_only_config(copies, v0_reads):
    old, trainer = v0_reads["t5"], identity.trainer_facts(copies["t5"])
    assert old["model.rope_theta"] == 10000.0 and old["model.dtype"] is None  # 4.51's reading
    rows = {r["key"]: r for r in drift(trainer, old, "v0", old["transformers_version"])}
    assert set(rows) == {"model.rope_theta", "model.dtype"}
    assert 'add "rope_theta": 100000.0 to config.json' in rows["model.rope_theta"]["message"]
    assert "only rope_parameters" in rows["model.rope_theta"]["cause"]
    assert 'add "torch_dtype": "bfloat16"' in rows["model.dtype"]["message"]


def test_v0_env_cannot_load_a_transformers_5_tokenizer_class(copies, v0_reads):
    old, trainer = v0_reads["t5_tok"], identity.trainer_facts(copies["t5_tok"])
    assert "tokenizer" in old["errors"]
    rows = {r["key"]: r for r in drift(trainer, old, "v0", old["transformers_version"])}
    assert set(rows) == {"model.rope_theta", "model.dtype", "model.tokenizer_eos_token_id"}
    assert "PreTrainedTokenizerFast" in rows["model.tokenizer_eos_token_id"]["fix"]
