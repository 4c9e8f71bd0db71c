"""The engine registry: engine kind (a setting's `engine`) -> the class implementing
parity.engines.base.Engine, imported lazily ("module:Class") so that the CLI and the metric code
start without importing torch or vLLM. A new engine kind is one module plus one line here, or
one module in another package offered in the `parity.engines` entry-point group (parity.plugins)."""

from __future__ import annotations

import importlib
from pathlib import Path

from parity import plugins

ENGINES: dict[str, str] = {
    # vLLM in a worker process of the setting's environment (V0 or V1 by the env and its vars).
    "vllm": "parity.engines.worker_engine:VllmEngine",
    # A served endpoint (vLLM's OpenAI-compatible server) parity only talks to, over HTTP.
    "openai": "parity.engines.openai_engine:OpenAIEngine",
}


def kinds() -> dict[str, str]:
    """Engine kind -> "module:Class": the built-ins, then the plugins' (parity.plugins)."""
    return plugins.targets(plugins.ENGINES, ENGINES)


def engine_class(kind: str):
    """The class registered for an engine kind (KeyError naming the known kinds; PluginError
    naming the entry point and its package when a plugin's class fails to load)."""
    known = kinds()
    if kind not in known:
        raise KeyError(f"unknown engine kind {kind!r}; known: {', '.join(known)}")
    if kind not in ENGINES:
        return plugins.load(plugins.ENGINES, kind, plugins.entry_points(plugins.ENGINES)[kind])
    module, _, name = known[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def create(setting, model_path: str, python: str, log_path: Path, **kwargs):
    """An engine for a setting (not started): `engine.start()` or use it as a context manager."""
    return engine_class(setting.engine)(setting, model_path, python, log_path, **kwargs)
