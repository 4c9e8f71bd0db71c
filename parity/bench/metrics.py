"""`python -m parity.bench metrics [--tokens 1000000]`: the per-token metrics and verdict
statistics the rl and logprobs categories run, on synthetic data of that many sampled tokens
(sequences of 50-200 tokens, 4 samples per prompt unless told, two engine roles), timed per
function.

Target: each category's whole judgement of 1M tokens (rl.check, logprobs.check) under 1 s."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from parity.categories import _common, logprobs, rl
from parity.engines.base import Sequence
from parity.trainer.reference import RefScore
from parity.verdicts import formulas, metrics, stats

SAMPLES_PER_PROMPT = 4
TARGET_S = 1.0
ROLES = ("baseline", "candidate")


def synthetic(
    n_tokens: int,
    seed: int = 0,
    samples: int = SAMPLES_PER_PROMPT,
) -> dict[str, tuple[list[Sequence], list[RefScore], list[float]]]:
    """role -> (sequences, reference scores, rewards): n_tokens sampled tokens in all, half per
    role, both roles answering the same prompts, `samples` sequences per prompt. The engine
    logprobs are the reference's plus noise; ~0.5% of tokens are excluded by the reference
    (-inf), a tenth of those tied at the cut. Engine logprobs are Python lists, as engines
    return them; reference scores numpy arrays."""
    rng = np.random.default_rng(seed)
    per_role = max(1, n_tokens // len(ROLES))
    lengths = []
    while sum(lengths) < per_role:
        lengths.append(int(rng.integers(50, 201)))
    lengths[-1] -= sum(lengths) - per_role
    if lengths[-1] <= 0:
        lengths.pop()
    out = {}
    for shift, role in enumerate(ROLES):
        seqs, scores, rewards = [], [], []
        for i, n in enumerate(lengths):
            processed = -rng.gamma(0.5, 1.0, n)
            excluded = rng.random(n) < 0.005
            cand = processed + rng.normal(0.0, 0.02 + 0.01 * shift, n)
            processed[excluded] = -np.inf
            tie = excluded & (rng.random(n) < 0.1)
            raw = processed - rng.gamma(1.0, 0.3, n)
            raw[excluded] = np.minimum(cand[excluded] - 1.0, -0.1)
            seqs.append(
                Sequence(
                    prompt_index=i // samples,
                    sample_index=i % samples,
                    prompt_token_ids=[1, 2, 3],
                    token_ids=rng.integers(0, 50000, n).tolist(),
                    logprobs=np.minimum(cand, 0.0).tolist(),
                )
            )
            scores.append(RefScore(raw, processed, rng.gamma(2.0, 0.5, n), tie))
            rewards.append(float(rng.random() < 0.5 + 0.05 * shift))
        out[role] = (seqs, scores, rewards)
    return out


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def run(
    n_tokens: int,
    seed: int = 0,
    repeat: int = 3,
    samples: int = SAMPLES_PER_PROMPT,
) -> dict[str, Any]:
    """Time each function the categories call on per-token data (summed over the calls one
    judgement makes) and each category's whole judgement, best of `repeat` (the machine may be
    shared). Returns {"functions": {name: s}, "categories": {name: s}, "n_tokens",
    "n_sequences", "target_s", "meets_target"}."""
    data = synthetic(n_tokens, seed, samples)
    best: dict[str, dict[str, float]] = {"functions": {}, "categories": {}}
    for _ in range(max(1, repeat)):
        for part, times in zip(("functions", "categories"), _once(data)):
            for name, s in times.items():
                best[part][name] = min(s, best[part].get(name, s))
    return {
        "n_tokens": sum(len(s.token_ids) for seqs, _, _ in data.values() for s in seqs),
        "n_sequences": sum(len(seqs) for seqs, _, _ in data.values()),
        **best,
        "samples_per_prompt": samples,
        "repeat": max(1, repeat),
        "target_s": TARGET_S,
        "meets_target": all(v < TARGET_S for v in best["categories"].values()),
    }


def _once(data) -> tuple[dict[str, float], dict[str, float]]:
    """One timing pass: seconds per function, seconds per category judgement."""
    clip = formulas.ClipRange()
    fn_s: dict[str, float] = {}

    def add(name: str, fn: Callable[[], Any]) -> Any:
        dt, value = _timed(fn)
        fn_s[name] = fn_s.get(name, 0.0) + dt
        return value

    per_seq = {}
    for role, (seqs, scores, rewards) in data.items():
        cand = add("_common.arrays", lambda: _common.arrays([s.logprobs for s in seqs]))
        proc = add("_common.arrays", lambda: _common.arrays([r.processed_logprob for r in scores]))
        raw = add("_common.arrays", lambda: _common.arrays([r.raw_logprob for r in scores]))
        ent = add("_common.arrays", lambda: _common.arrays([r.entropy for r in scores]))
        ties = [r.boundary_tie for r in scores]
        add("metrics.summarize", lambda: metrics.summarize(proc, cand, ent, clip))
        add("metrics.summarize", lambda: metrics.summarize(raw, cand, None, clip))
        per_seq[role] = add(
            "metrics.per_sequence", lambda: metrics.per_sequence(proc, cand, ent, clip)
        )
        per_seq[role]["excluded_rate"] = add(
            "metrics.excluded_rates", lambda: metrics.excluded_rates(proc, cand, ties)[0]
        )
        per_seq[role]["reward"] = np.asarray(rewards)
    groups = {
        role: add(
            "_common.clusters", lambda: _common.clusters([s.prompt_index for s in data[role][0]])
        )
        for role in ROLES
    }
    kw = dict(paired=True, base_clusters=groups["baseline"], cand_clusters=groups["candidate"])
    for key in rl.MISMATCH_METRICS.values():
        if not all(key in per_seq[role] for role in ROLES):
            continue  # excluded_numerics_rate: these scores carry no cut ranks
        add(
            "stats.non_inferiority",
            lambda: stats.non_inferiority(
                per_seq["baseline"][key], per_seq["candidate"][key], 0.01, **kw
            ),
        )
    for key in ("entropy_ref_mean", "reward"):
        add(
            "stats.equivalence_tost",
            lambda: stats.equivalence_tost(
                per_seq["baseline"][key], per_seq["candidate"][key], 0.2, **kw
            ),
        )
    for key in ("abs_dlogp_mean", "kl_k3_mean", "excluded_rate"):
        add(
            "stats.threshold",
            lambda: stats.threshold(per_seq["candidate"][key], 0.05, clusters=groups["candidate"]),
        )
    margins = dict(rl.RL.margins)
    cat_s = {
        "rl.check (both roles)": _timed(lambda: rl.check(data, margins, clip, 100))[0],
        "logprobs.check (all tokens, one role)": _timed(
            lambda: logprobs.check(*_one_role(data), logprobs.Logprobs.tolerances, clip, 100)
        )[0],
    }
    return fn_s, cat_s


def _one_role(data) -> tuple[list[Sequence], list[RefScore]]:
    """Both roles' sequences as one engine's (the logprobs category judges one engine); prompt
    ids kept distinct so the sampling design stays 4 samples per prompt."""
    seqs, scores = [], []
    offset = 0
    for role in ROLES:
        s, r, _ = data[role]
        seqs += [
            Sequence(
                x.prompt_index + offset, x.sample_index, x.prompt_token_ids, x.token_ids, x.logprobs
            )
            for x in s
        ]
        scores += r
        offset += max(x.prompt_index for x in s) + 1
    return seqs, scores


def render(result: dict[str, Any], console) -> None:
    """The timings as a rich table: functions, then the categories' whole judgements."""

    grid = Table(
        title=f"metrics and statistics on {result['n_tokens']:,} tokens "
        f"({result['n_sequences']:,} sequences, "
        f"{result['samples_per_prompt']} per prompt), "
        f"best of {result['repeat']}"
    )
    grid.add_column("function", no_wrap=True)
    grid.add_column("seconds", justify="right")
    for name, s in result["functions"].items():
        grid.add_row(name, f"{s:.3f}")
    grid.add_section()
    for name, s in result["categories"].items():
        mark = "[green]ok[/]" if s < result["target_s"] else "[red]over[/]"
        grid.add_row(f"[bold]{name}[/]", f"{s:.3f} {mark}")
    console.print(grid)
    console.print(
        f"target: each category's judgement < {result['target_s']:g} s: "
        + ("met" if result["meets_target"] else "NOT met"),
        highlight=False,
    )


def main(
    n_tokens: int,
    seed: int = 0,
    as_json: bool = False,
    repeat: int = 3,
    samples: int = SAMPLES_PER_PROMPT,
) -> int:
    """Run and print; exit code 0 when the target is met, else 1."""
    result = run(n_tokens, seed, repeat, samples)
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        render(result, Console())
    return 0 if result["meets_target"] else 1
