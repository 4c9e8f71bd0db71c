"""Where past the trainer's top-k/top-p cut the excluded tokens of a run sit: every engine's
sampled tokens in a run's tokens.parquet re-scored by parity's reference (fp32 head), and the
excluded ones counted by cut rank (1: the first token past the cut, or tied with it; 2: one
cut token above it; ...). The numerics-vs-configuration split of the excluded-token findings
(docs/measurements.md#excluded-split).

    .venv/bin/python scripts/excluded_split.py RUN_DIR --model smollm2-135m \
        --source arithmetic:96 --temperature 0.7 --top-p 0.9 --top-k 50
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from parity.engines.base import SamplingSpec
from parity.run.prompts import load_prompts, render
from parity.setup.models import resolve_model
from parity.trainer.reference import Reference


def main() -> None:
    from transformers import AutoTokenizer  # lazy: heavy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--source", default="arithmetic:96")
    ap.add_argument("--prompt-seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--top-k", type=int, default=50)
    args = ap.parse_args()
    path = resolve_model(args.model)
    prompts = render(
        AutoTokenizer.from_pretrained(path), load_prompts(args.source, None, args.prompt_seed)
    )
    ref = Reference(path, "float32", device="cpu")
    sampling = SamplingSpec(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    tokens = pd.read_parquet(args.run_dir / "tokens.parquet")
    for engine, rows in tokens.groupby("engine"):
        pairs = [
            (prompts[int(s.prompt_index.iloc[0])], s.sort_values("position").token_id.tolist())
            for _, s in rows.groupby("sequence_id")
        ]
        ranks = np.concatenate([r.cut_rank for r in ref.score(pairs, sampling)])
        cut = ranks[ranks > 0].astype(int)
        n = ranks.size
        print(
            f"{engine}: {cut.size}/{n} excluded ({100 * cut.size / n:.2f}%); rank 1: "
            f"{int((cut == 1).sum())} ({100 * (cut == 1).sum() / n:.2f}%), beyond: "
            f"{int((cut > 1).sum())} ({100 * (cut > 1).sum() / n:.2f}%); by rank "
            f"{dict(sorted(Counter(cut.tolist()).items()))}"
        )


if __name__ == "__main__":
    main()
