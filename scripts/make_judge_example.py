"""Write the example per-token table for `parity judge` (canonical long layout, synthetic):
64 sequences (32 prompts x 2 samples) x 32 tokens, weight versions 0-3, engine = trainer + noise.

    .venv/bin/python scripts/make_judge_example.py examples/judge-example.parquet
    .venv/bin/python scripts/make_judge_example.py /tmp/shifted.parquet --shift -0.2   # fails
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def example_table(
    n_prompts: int = 32,
    samples: int = 2,
    n_tokens: int = 32,
    shift: float = 0.0,
    noise: float = 0.02,
    seed: int = 0,
) -> pa.Table:
    """Trainer logprobs mostly near 0 with a tail (Gamma), the engine's within `noise` of them
    plus a constant `shift` (negative: the engine below the trainer, as raw logprobs are)."""
    rng = np.random.default_rng(seed)
    n_seqs = n_prompts * samples
    n = n_seqs * n_tokens
    trainer = -rng.gamma(0.4, 1.5, n)
    engine = np.minimum(trainer + rng.normal(0.0, noise, n) + shift, 0.0)
    seq = np.repeat(np.arange(n_seqs), n_tokens)
    return pa.table(
        {
            "sequence_id": seq,
            "prompt_id": seq // samples,
            "position": np.tile(np.arange(n_tokens), n_seqs),
            "token_id": rng.integers(0, 32000, n),
            "engine_logprob": engine.astype(np.float32),
            "trainer_logprob": trainer.astype(np.float32),
            "entropy": (rng.gamma(1.2, 0.8, n) + 0.01).astype(np.float32),
            "weight_version": seq % 4,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shift", type=float, default=0.0, help="engine - trainer offset (nats)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(example_table(shift=args.shift, seed=args.seed), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
