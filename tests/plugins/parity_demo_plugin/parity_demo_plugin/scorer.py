"""Trainer-side scorer `demo`: no model; every completion token's logprob is the echo engine's
formula (parity_demo_plugin.echo.logprob), raw = processed, with a fixed entropy."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from parity.engines.base import SamplingSpec
from parity.trainer.reference import RefScore
from parity_demo_plugin.echo import logprob

ENTROPY = 1.0  # nats, at every position (there is no distribution to take it from)


class DemoScorer:
    """Implements parity.trainer.base.Scorer: deterministic, on any device, cached nowhere."""

    def __init__(
        self,
        model_path: str,
        head_dtype: str,
        *,
        model_fp: str | None = None,
        cache: Any = None,
        tie_rule: str | None = None,
        device: str = "cpu",
    ):
        self.model_path = model_path
        self.stats: dict[str, Any] = {
            "forward_s": 0.0,
            "load_s": 0.0,
            "scored_tokens": 0,
            "scored_seqs": 0,
            "cached_seqs": 0,
            "device": device,
        }

    def score(
        self, pairs: list[tuple[list[int], list[int]]], sampling: SamplingSpec
    ) -> list[RefScore]:
        t0 = time.perf_counter()
        out = []
        for _prompt, tokens in pairs:
            lps = np.array([logprob(t, j) for j, t in enumerate(tokens)], np.float64)
            out.append(RefScore(lps, lps.copy(), np.full(len(tokens), ENTROPY)))
        self.stats["scored_seqs"] += len(pairs)
        self.stats["scored_tokens"] += sum(len(t) for _, t in pairs)
        self.stats["forward_s"] += time.perf_counter() - t0
        return out

    def close(self) -> None:
        pass
