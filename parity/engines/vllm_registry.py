"""Worker-side: vLLM's model-registry inspection without a Python start each time.

vLLM learns what a model class supports (pooling, pipeline parallel, ...) by importing it in a
fresh interpreter (`registry._run_in_subprocess`: no CUDA initialised in the engine's process
before it forks its workers). That interpreter imports vLLM again: 5.1-5.7 s of a V0 0.8.5 engine
start and of its validator on the 2-core CPU, against 0.6-0.9 s for the same inspection in process
(docs/measurements.md#modelinfo-cache). V1 0.32 keeps the result on disk (VLLM_CACHE_ROOT/
modelinfos); V0 0.8.5 has no such cache.

install() makes two changes where they are safe:
- a validator (it never starts an engine, so initialising CUDA cannot hurt it) inspects in
  process, on every vLLM;
- every process keeps V0's results on disk under $PARITY_VLLM_MODELINFO_DIR, keyed by the vLLM
  version, the model class and a hash of its module's source, as V1 does natively.

Only the standard library at import time, vLLM inside functions (the V0 env has no parity).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import tempfile

# Where V0-era vLLM's inspection results are kept (set by the harness; unset: not kept).
MODELINFO_DIR_ENV = "PARITY_VLLM_MODELINFO_DIR"


def install(in_process: bool) -> str:
    """Patch this process's vLLM registry; returns what was done, for the engine's record:
    "in_process", "disk_cache", both joined by "+", or why nothing was ("no vLLM registry",
    "unknown registry layout", "native cache")."""
    try:
        from vllm.model_executor.models import registry  # lazy: vLLM, in its interpreter
    except ImportError:
        return "no vLLM registry"
    lazy = getattr(registry, "_LazyRegisteredModel", None)
    if lazy is None or not callable(getattr(registry, "_run_in_subprocess", None)):
        return "unknown registry layout"
    done = []
    if in_process:
        registry._run_in_subprocess = _call
        done.append("in_process")
    cache = os.environ.get(MODELINFO_DIR_ENV, "")
    if hasattr(lazy, "_load_modelinfo_from_cache"):
        return "+".join(done) or "native cache"
    if cache and not getattr(lazy, "_parity_disk_cache", False):
        lazy.inspect_model_cls = _cached(lazy.inspect_model_cls, registry, cache)
        lazy._parity_disk_cache = True
        done.append("disk_cache")
    return "+".join(done) or "not asked"


def _call(fn):
    """registry._run_in_subprocess's stand-in: the same function, in this process."""
    return fn()


def _cached(inspect, registry, cache: str):
    """`inspect` (a _LazyRegisteredModel's inspect_model_cls) answered from, and saved to,
    one JSON file per model class under `cache`."""

    def inspect_model_cls(self):
        path, key = _entry(self, registry, cache)
        if path is None:
            return inspect(self)
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("key") == key:
                return registry._ModelInfo(**saved["modelinfo"])
        except (OSError, ValueError, TypeError, KeyError):
            pass  # absent, unreadable or another layout: inspect again and rewrite
        info = inspect(self)
        _save(path, {"key": key, "modelinfo": dataclasses.asdict(info)})
        return info

    return inspect_model_cls


def _entry(model, registry, cache: str) -> tuple[str | None, dict]:
    """(the cache file of a lazily registered model class, the key its content must carry);
    no file when the class's module source cannot be read."""
    try:
        import vllm  # lazy: vLLM, in its interpreter

        spec = importlib.util.find_spec(model.module_name)
        with open(spec.origin, "rb") as f:
            source = hashlib.sha256(f.read()).hexdigest()
    except (ImportError, ValueError, AttributeError, TypeError, OSError):
        return None, {}
    key = {
        "vllm": getattr(vllm, "__version__", "?"),
        "module": model.module_name,
        "class": model.class_name,
        "source_sha256": source,
        "fields": sorted(f.name for f in dataclasses.fields(registry._ModelInfo)),
    }
    name = f"{model.module_name}.{model.class_name}.json"
    return os.path.join(cache, name), key


def _save(path: str, content: dict) -> None:
    """Write atomically (a concurrent engine reads the old file or the new one); a cache that
    cannot be written is left alone."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass
