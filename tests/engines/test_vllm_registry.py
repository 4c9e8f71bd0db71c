"""vllm_registry: V0-era vLLM's model inspection kept on disk, keyed so a changed model source
or vLLM inspects again (the real-engine evidence: tests/e2e/test_engine_starts.py)."""

import dataclasses
import json
import types

from parity.engines import vllm_registry


@dataclasses.dataclass(frozen=True)
class Info:  # a stand-in for vLLM's registry._ModelInfo
    architecture: str
    supports_pp: bool


def lazy_model(module: str = "json"):
    """A lazily registered model class whose module source is a real file (the key hashes it)."""
    return types.SimpleNamespace(module_name=module, class_name="Model")


def test_a_second_inspection_comes_from_disk_and_a_changed_key_inspects_again(tmp_path):
    registry = types.SimpleNamespace(_ModelInfo=Info)
    calls = []

    def inspect(model):
        calls.append(model.module_name)
        return Info("Model", True)

    cached = vllm_registry._cached(inspect, registry, str(tmp_path))
    assert cached(lazy_model()) == Info("Model", True) and calls == ["json"]
    assert cached(lazy_model()) == Info("Model", True) and calls == ["json"]  # from disk
    (path,) = tmp_path.glob("json.Model.json")
    saved = json.loads(path.read_text())
    saved["key"]["source_sha256"] = "another source"
    path.write_text(json.dumps(saved))
    assert cached(lazy_model()) == Info("Model", True) and calls == ["json", "json"]
    path.write_text("{not json")
    assert cached(lazy_model()) == Info("Model", True) and len(calls) == 3
    assert cached(lazy_model("no.such.module")) == Info("Model", True) and len(calls) == 4
    assert not list(tmp_path.glob("no.such*"))  # no source to key it on: never kept


def test_install_on_vllm_v1_leaves_its_native_cache_alone(monkeypatch, tmp_path):
    """V1 0.32 keeps model infos itself: a running engine is not patched; a validator runs the
    inspection in process."""
    from vllm.model_executor.models import registry

    monkeypatch.setenv(vllm_registry.MODELINFO_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(registry, "_run_in_subprocess", registry._run_in_subprocess)
    original = registry._LazyRegisteredModel.inspect_model_cls
    assert vllm_registry.install(in_process=False) == "native cache"
    assert vllm_registry.install(in_process=True) == "in_process"
    assert registry._run_in_subprocess is vllm_registry._call
    assert registry._LazyRegisteredModel.inspect_model_cls is original
