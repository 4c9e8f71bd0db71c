"""check_cache: an environment's answers before any engine starts, kept on disk and asked
again when anything they depend on changes."""

import json
import sys

import pytest
from fault_fakes import write_shim

from parity.engines import check_cache, engine_checks


@pytest.fixture
def model(tmp_path):
    root = tmp_path / "model"
    root.mkdir()
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model.safetensors").write_bytes(b"weights")
    return root


def test_the_model_stamp_reads_configs_not_weights(model):
    before = check_cache.model_stamp(str(model))
    (model / "model.safetensors").write_bytes(b"other weights")
    assert check_cache.model_stamp(str(model)) == before
    (model / "config.json").write_text('{"model_type": "llama", "rope_theta": 1}')
    assert check_cache.model_stamp(str(model)) != before
    assert check_cache.model_stamp("HuggingFaceTB/SmolLM2-135M") is None  # a hub name


def test_the_env_stamp_needs_vllm_and_follows_the_inherited_variables(tmp_path, monkeypatch):
    assert check_cache.env_stamp(write_shim(tmp_path)) is None  # no vLLM beside it: no cache
    here = check_cache.env_stamp(sys.executable)
    assert here is not None  # the project's environment has vLLM
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")
    assert check_cache.env_stamp(sys.executable) != here


def test_a_kept_verdict_starts_no_validator_and_a_changed_config_asks_again(
    tmp_path, model, monkeypatch
):
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    python = write_shim(tmp_path)
    monkeypatch.setattr(check_cache, "env_stamp", lambda python: "an environment")
    started = []
    real = engine_checks._validator
    monkeypatch.setattr(engine_checks, "_validator", lambda *a: (started.append(a[0]), real(*a))[1])
    arg_sets = [{"model": str(model), "engine_args": {"dtype": "float32"}, "env_vars": {}}]
    log = tmp_path / "validate.log"
    first = engine_checks.validate_engine_args(python, arg_sets, log)
    assert first["cached"] == 0 and len(started) == 1
    assert engine_checks.validate_engine_args(python, arg_sets, log)["cached"] == 1
    assert len(started) == 1  # answered from the cache
    assert not engine_checks.needs_validator(python, arg_sets, [])
    (model / "config.json").write_text('{"model_type": "mistral"}')
    assert engine_checks.needs_validator(python, arg_sets, [])
    assert engine_checks.validate_engine_args(python, arg_sets, log)["cached"] == 0
    assert len(started) == 2
    kept = list((check_cache.cache_dir() / "checks").glob("validate-*.json"))
    assert len(kept) == 2 and json.loads(kept[0].read_text())["problems"] == []
