"""Engine work shared across a run's scenarios: MemoEngine (identical generate requests of
different scenarios generated once) and Ahead (the next engine's worker process importing vLLM
while the current engine works)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from parity import engines
from parity.engines.base import Sequence
from parity.run import faults, modelcheck


class MemoEngine:
    """An engine seen through a memo: identical generate requests of different scenarios in a
    run (same prompts, same sampling, per-prompt seeds) are generated once and reused, e.g. one
    V0 baseline for several candidates. Only categories whose engine work is plain generation
    get it (Category.reuses_generations): a probe that repeats a request on purpose (cold then
    warm cache) or fills a cache before an update needs the real call. Each caller gets its own
    Sequence objects. Everything else passes through."""

    def __init__(self, engine):
        self._engine = engine
        self._memo: dict[str, list[Sequence]] = {}
        self.reused = 0

    def generate(self, prompts, sampling) -> list[Sequence]:
        memo = json.dumps([prompts, sampling.to_dict()])
        if memo in self._memo:
            self.reused += 1
        else:
            self._memo[memo] = self._engine.generate(prompts, sampling)
        return [replace(s) for s in self._memo[memo]]

    def forget(self) -> None:
        """After the weights change, earlier generations no longer describe the engine."""
        self._memo.clear()

    def update_weights(self, *args, **kwargs):
        self.forget()
        return self._engine.update_weights(*args, **kwargs)

    def generate_with_update(self, *args, **kwargs):
        self.forget()
        return self._engine.generate_with_update(*args, **kwargs)

    def generate_nopause(self, *args, **kwargs):
        self.forget()
        return self._engine.generate_nopause(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._engine, name)


class Ahead:
    """The next engine's worker process, started while the current engine works: it imports
    vLLM then (engine.preload), so that its start() only creates the engine. Only engines that
    will start are preloaded; what is left is closed with the run."""

    def __init__(self, items, refused, doomed, drifts, pythons, log_dir: Path, kwargs):
        self.items, self.pythons, self.log_dir, self.kwargs = items, pythons, log_dir, kwargs
        self.skip = {
            i
            for i, ((key, model), jobs) in enumerate(items, 1)
            if (key, model) in refused
            or all(id(r) in doomed for r, _ in jobs)
            or modelcheck.drift_for(drifts, jobs[0][0].scenario.settings()[jobs[0][1]], model)
        }
        self.engines: dict[int, Any] = {}
        self.offsets: dict[int, int] = {}

    def take(self, n: int):
        return self.engines.pop(n, None)

    def preload_after(self, n: int) -> None:

        nxt = next((i for i in range(n + 1, len(self.items) + 1) if i not in self.skip), None)
        if nxt is None or nxt in self.engines:
            return
        (key, model), jobs = self.items[nxt - 1]
        setting = jobs[0][0].scenario.settings()[jobs[0][1]]
        path = self.log_dir / f"engine-{nxt}-{key}.log"
        engine = None
        try:  # a failure here is the next engine's own: its turn creates it again and says why
            engine = engines.create(setting, model, self.pythons[setting.env], path, **self.kwargs)
            if not hasattr(engine, "preload"):
                return
            self.offsets[nxt] = faults.log_size(path)
            engine.preload()
        except Exception:
            if engine is not None:
                engine.close()
            self.offsets.pop(nxt, None)
            return
        self.engines[nxt] = engine

    def close(self) -> None:
        while self.engines:
            self.engines.popitem()[1].close()
