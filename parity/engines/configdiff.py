"""Effective engine configurations side by side: every difference tagged with its consequence
for RL, and the keys that must match between a baseline and a candidate (by default the
V0-parity set, each with its fix). Pure functions over the engines' "key" dicts."""

from __future__ import annotations

from typing import Any

from parity.engines.identity import same

# Severity of a difference: "fail" = not the same model; "rl" = changes what the RL loss sees or
# risks stale data; "numeric" = kernels/batching, logprobs move within noise; "info" = neither.
CONSEQUENCES: dict[str, tuple[str, str]] = {
    "enable_prefix_caching": (
        "rl",
        "prefix caching on: after a weight update a cache hit reuses "
        "KV computed with the old weights (stale KV); set "
        "enable_prefix_caching=False or reset the cache at every update",
    ),
    "async_scheduling": (
        "rl",
        "async scheduling on: the scheduler runs a step ahead of the "
        "model, so around a weight update tokens can come from a step-old "
        "weight version; set async_scheduling=False",
    ),
    "cascade_attention": (
        "rl",
        "cascade attention allowed: shared-prefix batches take another "
        "attention path than the trainer's; set disable_cascade_attn=True",
    ),
    "head_dtype": (
        "rl",
        "lm_head dtype differs: every logit is rounded differently, and the "
        "trainer computes them in fp32 (see the lm_head category)",
    ),
    "logprobs_mode": (
        "rl",
        "logprob semantics differ: the RL loss needs the processed "
        "distribution the sampler draws from (see the logprobs category)",
    ),
    "generation_config_defaults": (
        "rl",
        "sampling defaults from the checkpoint's "
        "generation_config.json apply to requests that leave them "
        "unset: the engines may sample different distributions",
    ),
    "dtype": ("rl", "the engines compute in different precisions"),
    "kv_cache_dtype": (
        "rl",
        "the KV cache is stored in another dtype: attention reads rounded keys and values",
    ),
    "enable_chunked_prefill": (
        "numeric",
        "long prompts are prefilled in chunks: numerics differ "
        "slightly from a one-shot prefill (prefill_consistency probe)",
    ),
    "max_num_seqs": (
        "numeric",
        "batch composition differs: logprobs can move within batch "
        "noise (batch_invariance probe); throughput",
    ),
    "max_num_batched_tokens": (
        "numeric",
        "step token budget differs: batch composition and "
        "chunking differ (batch_invariance probe); throughput",
    ),
    "enforce_eager": ("numeric", "compiled vs eager kernels: numerics within noise expected"),
    "compilation_level": ("numeric", "compiled vs eager kernels: numerics within noise expected"),
    "cudagraph_mode": ("numeric", "CUDA graphs vs eager: numerics within noise expected"),
    "tensor_parallel_size": (
        "numeric",
        "tensor parallelism splits each layer's reductions "
        "across ranks (all-reduce): logprobs move within noise",
    ),
    "pipeline_parallel_size": (
        "numeric",
        "pipeline stages on other devices: numerics as one device expected; throughput",
    ),
    "data_parallel_size": ("info", "engine replicas: each request runs on one of them"),
    "block_size": ("info", "KV block size: prefix-cache granularity only"),
    "max_model_len": ("info", "longest sequence the engine accepts"),
    "seed": (
        "info",
        "global seed: only requests without their own seed are affected (parity "
        "seeds every request)",
    ),
}
ENGINE_IDENTITY = ("engine_impl", "vllm_version", "vllm_use_v1_env", "platform")
MODEL_CONSEQUENCE = "model config differs: the two engines are not running the same model"
# Values that carry an RL risk even when both engines share them.
RISKY = {"enable_prefix_caching": True, "async_scheduling": True, "cascade_attention": "allowed"}


# ----------------------------------------------------------------------------- config diff


def tag(key: str, base: Any, cand: Any) -> tuple[str, str]:
    """(severity, consequence) of one difference between baseline and candidate."""
    if key.startswith("model."):
        if base is None or cand is None:
            return "unknown", f"{key} could not be read on one side"
        return "fail", f"{MODEL_CONSEQUENCE} ({key}: {base!r} vs {cand!r})"
    if key in ENGINE_IDENTITY:
        return "info", "the engines being compared"
    severity, text = CONSEQUENCES.get(key, ("info", "no known consequence for RL"))
    if key in RISKY:
        risky = [role for role, v in (("baseline", base), ("candidate", cand)) if v == RISKY[key]]
        if not risky:
            return "info", "off or absent in both engines: no RL consequence"
        text = f"{text} (on in the {' and '.join(risky)})"
    return severity, text


def config_diff(base: dict[str, Any], cand: dict[str, Any]) -> list[dict[str, Any]]:
    """Every key whose effective value differs, with its severity and RL consequence.

    Args:
        base, cand: the "key" sections of the two engines' effective configs.
    Returns:
        [{"key", "baseline", "candidate", "severity", "consequence"}], model keys first.
    """
    rows = []
    for key in sorted(set(base) | set(cand), key=lambda k: (not k.startswith("model."), k)):
        b, c = base.get(key), cand.get(key)
        if b is None or c is None:
            if b is c:
                continue
        elif equal(key, b, c):
            continue
        severity, consequence = tag(key, b, c)
        rows.append(
            {
                "key": key,
                "baseline": b,
                "candidate": c,
                "severity": severity,
                "consequence": consequence,
            }
        )
    return rows


def risks(key: dict[str, Any]) -> list[str]:
    """Settings of one engine that carry an RL risk whatever the other engine does."""
    return [k for k, v in RISKY.items() if key.get(k) == v]


# The keys that must match by default (scenario field `must_match` overrides): the runtime
# defaults the V0 -> V1 move changed, with the setting that restores V0's behaviour.
V0_PARITY_KEYS = (
    "enable_prefix_caching",
    "async_scheduling",
    "cascade_attention",
    "logprobs_mode",
    "head_dtype",
)
FIXES = {
    "enable_prefix_caching": "enable_prefix_caching=False (or reset the cache at every update)",
    "async_scheduling": "async_scheduling=False",
    "cascade_attention": "disable_cascade_attn=True",
    "logprobs_mode": "logprobs_mode=processed_logprobs",
    "head_dtype": "an fp32 lm_head on both: V1 hf_overrides={head_dtype: float32}, V0 "
    "PARITY_FP32_HEAD=1 (profile v0-fp32head)",
}
# Spellings of one behaviour: V0 has no cascade attention, which is the same as V1's "off".
_EQUIVALENT = {"cascade_attention": {"not_applicable": "off"}}


def normalized(key: str, value: Any) -> Any:
    """A value as compared: engine-specific spellings of one behaviour made equal."""
    return _EQUIVALENT.get(key, {}).get(value, value) if isinstance(value, str) else value


def equal(key: str, a: Any, b: Any) -> bool:
    """One key's two values are the same behaviour (identity.same after normalized)."""
    return same(normalized(key, a), normalized(key, b))


def must_match(
    base: dict[str, Any],
    cand: dict[str, Any],
    keys=V0_PARITY_KEYS,
) -> list[dict[str, Any]]:
    """For each key that must match: {"key", "baseline", "candidate", "status", "fix"}, status
    "same", "differs" or "unknown" (a side did not report it: never taken as the same)."""
    rows = []
    for key in keys:
        b, c = base.get(key), cand.get(key)
        if b is None or c is None:
            status = "unknown"
        else:
            status = "same" if equal(key, b, c) else "differs"
        rows.append(
            {
                "key": key,
                "baseline": b,
                "candidate": c,
                "status": status,
                "fix": FIXES.get(key, f"set {key} alike on both engines"),
            }
        )
    return rows
