"""Where past the trainer's top-k/top-p cut the excluded tokens of a run sit: every engine's
sampled tokens in a run's tokens.parquet re-scored by parity's reference (fp32 head, all of a
scenario's sequences in one call, as the runner scores them), the excluded ones counted by cut
rank (1: the first token past the cut, or tied with it) and by cut distance (the logit-error
spread that could keep them, sampler.cut_distances) against _common.NUMERICS_SPREAD, and the
logprobs category's verdict on them with the shipped tolerances (processed semantics). The
numerics-vs-configuration split of the excluded-token findings
(docs/measurements.md#excluded-split).

    .venv/bin/python scripts/excluded_split.py RUN_DIR --model smollm2-135m \
        --temperature 0.7 --top-p 0.9 --top-k 50
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from parity.categories import _common, logprobs
from parity.engines.base import SamplingSpec, Sequence
from parity.run.prompts import load_prompts, render
from parity.run.scenario_fields import DEFAULT_MIN_TOKENS
from parity.setup.models import fingerprint, resolve_model
from parity.trainer.reference import Reference, ScoreCache
from parity.verdicts.formulas import ClipRange


def sequences(rows: pd.DataFrame, prompts: list[list[int]]) -> list[Sequence]:
    out = []
    for _, s in rows.groupby("sequence_id", sort=True):
        s = s.sort_values("position")
        pi = int(s.prompt_index.iloc[0])
        out.append(
            Sequence(
                pi,
                int(s.sample_index.iloc[0]),
                prompts[pi],
                s.token_id.tolist(),
                s.engine_logprob.tolist(),
            )
        )
    return out


def report(name: str, seqs: list[Sequence], ref: Reference, sampling: SamplingSpec) -> None:
    scores = ref.score([(s.prompt_token_ids, s.token_ids) for s in seqs], sampling)
    ranks = np.concatenate([r.cut_rank for r in scores])
    dist = np.concatenate([r.cut_distance for r in scores])
    out = ranks > 0
    n, cut = ranks.size, ranks[out].astype(int)
    near = int((dist[out] <= _common.NUMERICS_SPREAD).sum())
    q = np.quantile(dist[out], [0.5, 0.9]) if out.any() else (np.nan, np.nan)
    print(
        f"{name}: {cut.size}/{n} excluded ({100 * cut.size / n:.2f}%); rank 1: "
        f"{int((cut == 1).sum())}, beyond: {int((cut > 1).sum())}; by rank "
        f"{dict(sorted(Counter(cut.tolist()).items()))}"
    )
    print(
        f"  cut distance of the excluded: median {q[0]:.3f}, p90 {q[1]:.3f}, max "
        f"{dist[out].max() if out.any() else np.nan:.3f}; within {_common.NUMERICS_SPREAD}: "
        f"{near} ({100 * near / n:.2f}%), beyond: {cut.size - near} "
        f"({100 * (cut.size - near) / n:.2f}%)"
    )
    verdict, _ = logprobs.check(
        seqs,
        scores,
        logprobs.Logprobs.tolerances,
        ClipRange(),
        DEFAULT_MIN_TOKENS,
        "processed",
        sampling,
    )
    findings = {f.name: f for f in verdict.findings}
    shown = ("excluded_rate", "excluded_numerics_rate", "offset_seqmean", "abs_dlogp_seqmean")
    print(f"  logprobs verdict: {verdict.outcome} {verdict.diagnosis or ''}")
    for key in shown:
        f = findings.get(key)
        if f is not None:
            t = f.test or {}
            ci = f" [{t['ci_low']:.4f}, {t['ci_high']:.4f}]" if "ci_low" in t else ""
            print(f"    {key}: {f.value:.4f}{ci} vs {f.limit} -> {f.outcome}")


def main() -> None:
    from transformers import AutoTokenizer  # lazy: heavy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt-seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--scenario", action="append", help="only these scenarios (repeatable)")
    args = ap.parse_args()
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # The runner's score cache: the scores the run judged by, where it has them.
    ref = Reference(path, "float32", model_fp=fingerprint(path), cache=ScoreCache(), device="cpu")
    sampling = SamplingSpec(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    tokens = pd.read_parquet(args.run_dir / "tokens.parquet")
    for (scenario, engine), rows in tokens.groupby(["scenario", "engine"]):
        if args.scenario and scenario not in args.scenario:
            continue
        n_prompts = int(rows.prompt_index.max()) + 1
        source = f"arithmetic:{n_prompts}"
        prompts = render(tokenizer, load_prompts(source, None, args.prompt_seed))
        report(f"{scenario} {engine}", sequences(rows, prompts), ref, sampling)


if __name__ == "__main__":
    main()
