"""Category `lm_head`: does the candidate compute its logits with an fp32 lm_head (as the
trainer does) or in the model dtype? Read from the engine's own logprobs (the bf16/fp16 grid)
and from the trainer scored with both heads; fails when it is not the head required."""

from __future__ import annotations

from typing import Any

import numpy as np

from parity.categories import _common
from parity.categories.base import Category, choice
from parity.trainer.heads import HEAD_DTYPES
from parity.verdicts import core, metrics, samples

# Explicit mantissa bits of the 16-bit dtypes a head can round its logits to.
MANTISSA_BITS = {"bfloat16": 7, "float16": 10}
SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
# Logits with |l| >= 1/4 sit on a grid of spacing >= 2^-(bits + 2); a difference of two such
# logits is a multiple of it. Logprobs are fp32 (|lp| < 64: ulp <= 2^-18), so differences of
# grid values land within ~1e-5 of the grid; fp32-head logits land there by chance only.
GRID_TOL = 3e-5
LATTICE_ON = 0.9  # at least this share of positions on the grid: a 16-bit head
LATTICE_OFF = 0.3  # at most this share: an fp32 head
MIN_POSITIONS = 50


def _dtype_name(value: Any) -> str:
    return str(value or "").replace("torch.", "")


def on_grid(logprobs: list[float], mantissa_bits: int, tol: float = GRID_TOL) -> bool | None:
    """Whether one position's logprobs come from logits on a 16-bit float grid.

    lp_i = l_i - logsumexp(l), so lp_i - lp_j = l_i - l_j: with a 16-bit head those are
    differences of values with `mantissa_bits` explicit bits, i.e. multiples of a power of two
    no finer than 2^-(mantissa_bits + 2) when the logits are >= 1/4 in magnitude. True when
    every difference to the top logprob is within `tol` of a multiple of such a spacing; None
    when the position has fewer than two finite logprobs.
    """
    v = np.asarray(sorted((x for x in logprobs if np.isfinite(x)), reverse=True), np.float64)
    if v.size < 2:
        return None
    d = v[0] - v[1:]
    for k in range(0, mantissa_bits + 3):
        spacing = 2.0**-k
        if np.all(np.abs(d - spacing * np.round(d / spacing)) < tol):
            return True
    return False


def lattice(
    top_logprobs: list[list[dict[int, float]] | None], mantissa_bits: int, temperature: float = 1.0
) -> dict[str, Any]:
    """Share of positions whose top logprobs sit on the 16-bit grid (see on_grid).

    Processed logprobs at temperature T are (l_i - l_j) / T apart, so the differences are
    also tried rescaled by T; the better-fitting scale is reported.

    Args:
        top_logprobs: per sequence, per position {token: logprob} (sampled token + top-k).
        mantissa_bits: 7 for bf16, 10 for fp16.
        temperature: the request's temperature.
    Returns:
        {"n_positions", "n_on_grid", "fraction", "scale"}.
    """
    scales = [1.0] + ([temperature] if abs(temperature - 1.0) > 1e-6 and temperature > 1e-5 else [])
    best = {"n_positions": 0, "n_on_grid": 0, "fraction": float("nan"), "scale": 1.0}
    for scale in scales:
        flags = [
            on_grid([x * scale for x in pos.values()], mantissa_bits)
            for seq in top_logprobs
            if seq
            for pos in seq
        ]
        flags = [f for f in flags if f is not None]
        n, on = len(flags), int(sum(flags))
        frac = on / n if n else float("nan")
        if n and not (best["fraction"] >= frac):
            best = {"n_positions": n, "n_on_grid": on, "fraction": frac, "scale": scale}
    return best


def classify(
    lat: dict[str, Any],
    gap_diff: dict[str, float] | None,
    model_dtype: str,
) -> tuple[str | None, str]:
    """Which head the logits come from: "float32", "model" or None (undecided), and the evidence.

    The grid share decides when it is clear; the trainer comparison (mean |dlogp| to the
    model-dtype-head reference minus that to the fp32-head one, per sequence) decides only when
    the grid cannot be read. The comparison alone misleads: when the engine's hidden states
    differ from the trainer's by more than the bf16 rounding step, a bf16-head engine's
    rounding and the bf16 reference's rounding add up, so it sits closer to the fp32 reference.
    """
    frac = lat.get("fraction", float("nan"))
    if model_dtype == "float32":
        return "float32", "the model runs in float32: every head is fp32"
    if lat.get("n_positions", 0) >= MIN_POSITIONS and np.isfinite(frac):
        if frac >= LATTICE_ON:
            return (
                "model",
                f"{frac:.0%} of positions on the {SHORT.get(model_dtype, model_dtype)} grid",
            )
        if frac <= LATTICE_OFF:
            return (
                "float32",
                f"only {frac:.0%} of positions on the {SHORT.get(model_dtype, model_dtype)} grid",
            )
    if gap_diff is not None and np.isfinite(gap_diff["ci_low"]):
        if gap_diff["ci_low"] > 0:
            return "float32", "closer to the fp32-head trainer (90% CI of the gap difference > 0)"
        if gap_diff["ci_high"] < 0:
            return (
                "model",
                "closer to the model-dtype-head trainer (90% CI of the gap difference < 0)",
            )
    return None, "neither the grid share nor the trainer comparison is clear"


def paired_gap(gap_fp32: np.ndarray, gap_model: np.ndarray) -> dict[str, float]:
    """Per-sequence mean |dlogp| to the model-dtype-head trainer minus that to the fp32-head
    one: its mean and 90% bootstrap CI (> 0: the engine sits closer to the fp32 head)."""
    diff = np.asarray(gap_model, np.float64) - np.asarray(gap_fp32, np.float64)
    diff = diff[np.isfinite(diff)]
    lo, hi = samples.bootstrap_ci(diff, confidence=0.9) if diff.size >= 2 else (np.nan, np.nan)
    return {
        "mean": float(diff.mean()) if diff.size else float("nan"),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n_seqs": int(diff.size),
    }


def _engine_fix(config: dict[str, Any], want: str) -> str:
    """The fix for this engine, from where its effective config says the head dtype came
    from: its own head_dtype option (V1 0.32) or not (V0 0.8.5; V1 0.18.1, whose head_dtype
    applies to pooling models only), where parity's worker patch is the fix."""
    key = config.get("key", {})
    source = (config.get("notes") or {}).get("head_dtype") or ""
    v1 = str(key.get("engine_impl", "")).startswith("vllm.v1.")
    native = source == "model_config.head_dtype" if source else v1
    if want == "float32":
        if native:
            return "set hf_overrides={head_dtype: float32}"
        if v1:
            return (
                "this vLLM honours head_dtype for pooling models only: enable parity's fp32 "
                "head patch (env_vars PARITY_FP32_HEAD=1)"
            )
        return 'enable parity\'s fp32 head patch (PARITY_FP32_HEAD=1, e.g. profile "v0-fp32head")'
    if native:
        return 'drop hf_overrides head_dtype (or set it to "model")'
    return "unset PARITY_FP32_HEAD"


def judge(res, refs) -> tuple[core.Verdict, dict[str, Any]]:
    """The head dtype (_judge_head), and engine_neginf / absurd_logprob over the engine's
    sampled-token logprobs (_common.with_vanished)."""
    verdict, detail = _judge_head(res, refs)
    cand = [np.asarray(s.logprobs, np.float64) for s in res.runs["candidate"].sequences]
    return _common.with_vanished(verdict, cand, sum(c.size for c in cand)), detail


def _judge_head(res, refs) -> tuple[core.Verdict, dict[str, Any]]:
    """Score the candidate against the trainer with an fp32 head and with a model-dtype head,
    read the head dtype off its logprobs, and compare with the scenario's `require_head`."""
    sc = res.scenario
    er = res.runs["candidate"]
    seqs = er.sequences
    key = (er.effective_config or {}).get("key", {})
    model_dtype = _dtype_name(key.get("dtype"))
    processed = key.get("logprobs_mode") == "processed_logprobs"
    pairs = [(s.prompt_token_ids, s.token_ids) for s in seqs]
    cand = [np.asarray(s.logprobs, np.float64) for s in seqs]
    vs_ref, per_seq = {}, {}
    for head in HEAD_DTYPES:
        scores = refs.get(res.model_path, head, er).score(pairs, sc.sampling)
        ref = [np.asarray(r.processed_logprob if processed else r.raw_logprob) for r in scores]
        summary = metrics.summarize(ref, cand, None, sc.clip)
        vs_ref[head] = {
            k: summary[k] for k in ("abs_dlogp_mean", "abs_dlogp_p99", "kl_k3_mean", "n_tokens")
        }
        per_seq[head] = metrics.per_sequence(ref, cand, None, sc.clip)["abs_dlogp_mean"]
    gap_diff = paired_gap(per_seq["float32"], per_seq["model"])
    bits = MANTISSA_BITS.get(model_dtype)
    lat = (
        lattice([s.top_logprobs for s in seqs], bits, sc.sampling.temperature)
        if bits
        else {"n_positions": 0, "n_on_grid": 0, "fraction": float("nan")}
    )
    head, evidence = classify(lat, gap_diff, model_dtype)
    want = sc.options["require_head"]
    short = SHORT.get(model_dtype, model_dtype)
    gaps = (
        f"mean |dlogp| to the trainer with an fp32 head "
        f"{vs_ref['float32']['abs_dlogp_mean']:.4f}, with a {short} head "
        f"{vs_ref['model']['abs_dlogp_mean']:.4f}"
    )
    config_head = _dtype_name(key.get("head_dtype"))
    measured = None if head is None else ("float32" if head == "float32" else model_dtype)
    required = "float32" if want == "float32" or model_dtype == "float32" else model_dtype
    finding = core.equality(
        "head_dtype",
        measured,
        required,
        note=f"measured from the logits: {evidence}; "
        f"{lat.get('n_on_grid', 0)}/{lat.get('n_positions', 0)} "
        f"positions on the {short} grid",
    )
    mismatch_note = ""
    if measured and config_head and config_head != measured:
        mismatch_note = f"; the engine's config says head {config_head}, its logits say {measured}"
    detail = {
        "head": head,
        "required": want,
        "head_measured_dtype": measured,
        "config_head_dtype": config_head,
        "lattice": lat,
        "vs_ref": vs_ref,
        "gap_model_minus_fp32": gap_diff,
        "evidence": evidence,
        "key_metric": lat.get("fraction"),
        "headline": f"head {measured or '?'} (grid {lat.get('fraction', float('nan')):.2f}; "
        f"|dlogp| fp32 {vs_ref['float32']['abs_dlogp_mean']:.3g} / "
        f"{short} {vs_ref['model']['abs_dlogp_mean']:.3g})",
    }
    if finding.outcome == "inconclusive":
        return core.Verdict(
            "inconclusive", None, f"cannot tell the head dtype: {evidence} ({gaps})", [finding]
        ), detail
    if finding.outcome == "pass":
        return core.Verdict(
            "pass",
            None,
            f"the engine computes the lm_head in "
            f"{SHORT.get(measured, measured)} as required ({evidence}; {gaps})"
            f"{mismatch_note}",
            [finding],
        ), detail
    fix = _engine_fix(er.effective_config or {}, want)
    if want == "float32":
        diagnosis = f"{short}_head"
        message = (
            f"the engine computes the lm_head in {short} ({evidence}; {gaps}), the "
            f"trainer in fp32: {fix}"
        )
    else:
        diagnosis = "fp32_head"
        message = (
            f"the engine computes the lm_head in fp32 ({evidence}; {gaps}) but the "
            f"scenario requires the model dtype: {fix}"
        )
    return core.Verdict("fail", diagnosis, message + mismatch_note, [finding]), detail


class LmHead(Category):
    name = "lm_head"
    summary = "fp32 or model-dtype lm_head, read from the engine's own logits"
    fields = {"require_head": '"float32" (default) or "model": the head the engine must use'}
    diagnoses = {
        "bf16_head": "V1: hf_overrides={head_dtype: float32}; V0: PARITY_FP32_HEAD=1",
        "fp16_head": "V1: hf_overrides={head_dtype: float32}; V0: PARITY_FP32_HEAD=1",
        "fp32_head": "drop the fp32 head override",
        "vanished_tokens": _common.VANISHED_FIX,
        **_common.GATE_DIAGNOSIS,
    }
    findings = {"head_dtype": "equality", **_common.VANISHED, **_common.GATES}
    key_metric_name = "share of positions on the 16-bit grid"
    scores_refusal = (
        "it scores every sequence with an fp32 and a model-dtype head, a scores file holds one head"
    )

    def parse(self, data, sampling, path):
        problems = []
        want = choice(data, "require_head", HEAD_DTYPES, "float32", path, problems)
        if sampling.logprobs < 1:
            problems.append(
                (
                    path,
                    "sampling.logprobs",
                    "an lm_head check needs logprobs >= 1: "
                    "the head dtype is read from the "
                    "differences between the top logprobs",
                )
            )
        return {"require_head": want}, problems

    def judge(self, res, refs):
        return judge(res, refs)


CATEGORY = LmHead()
