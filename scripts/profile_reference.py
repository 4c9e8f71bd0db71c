"""cProfile of the trainer-side reference on a built-in model, no engine: `reference` scores 32
random (40-token prompt, 48-token completion) pairs at T 0.7, top-p 0.9, top-k 50 with
Reference; `update` runs the weight-update trainer (SplitScorer, the model and its perturbed
copy in fp32) as the update probes call it (docs/measurements.md#reference-speed).

    .venv/bin/python scripts/profile_reference.py reference --model smollm2-135m
    .venv/bin/python scripts/profile_reference.py update --model smollm2-135m
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import time
from pathlib import Path

from parity.engines.base import SamplingSpec
from parity.setup import models
from parity.trainer.reference import Reference
from parity.trainer.updates import SplitScorer


def _reference(path: str) -> int:
    ref = Reference(path, head_dtype="float32", model_fp=None)
    ref._load()
    pairs = [(_tokens(40), _tokens(48)) for _ in range(32)]
    sampling = SamplingSpec(temperature=0.7, top_p=0.9, top_k=50, max_tokens=48, seed=1)
    return _profiled(lambda: ref.score(pairs, sampling), ref.stats)


def _update(path: str) -> int:
    new = str(models.perturb(path, 1, 1.0, log=lambda m: None))
    scorer = SplitScorer(path, new, "float32", "float32")
    scorer.pairs()
    shared = _tokens(16)
    pairs = [(shared + _tokens(20), _tokens(24)) for _ in range(32)]
    sampling = SamplingSpec(temperature=1.0, max_tokens=24, seed=7)

    def work():
        scorer.old_many(pairs + pairs[:16], sampling)
        scorer.new_many(pairs, sampling)
        scorer.score_many([(p, t, 16) for p, t in pairs], sampling)

    return _profiled(work, {"scored_tokens": lambda: scorer.tokens})


VOCAB = [20000]  # token ids are drawn below this (the model's vocabulary, capped)


def _tokens(n: int) -> list[int]:
    return [random.randrange(VOCAB[0] // 20, VOCAB[0]) for _ in range(n)]


def _profiled(work, stats) -> int:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    work()
    prof.disable()
    shown = {k: v() if callable(v) else v for k, v in stats.items()}
    print(f"{time.perf_counter() - t0:.1f} s", shown)
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("reference", "update"))
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    random.seed(0)
    path = str(models.resolve_model(args.model))
    VOCAB[0] = min(20000, json.loads((Path(path) / "config.json").read_text())["vocab_size"])
    return (_reference if args.what == "reference" else _update)(path)


if __name__ == "__main__":
    raise SystemExit(main())
