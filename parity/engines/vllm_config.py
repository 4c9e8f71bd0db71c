"""The effective configuration of the worker's vllm.LLM, read from its live objects (what
VllmHost.effective_config reports): curated keys, notes, parity's patches, raw config sections.
Worker-side: the standard library at import time, vLLM and transformers inside functions."""

from __future__ import annotations

import dataclasses
import enum
import os

# Its siblings: by bare name when run in the worker script (the script's directory is
# sys.path[0]), or from the package when imported as parity.engines.vllm_config (tests). Only the
# standard library and vLLM otherwise: the V0 engine's interpreter has no parity.
if __package__:
    from parity.engines import identity, vllm_patches
else:
    import identity
    import vllm_patches


# ----------------------------------------------------------------------------- helpers


def _jsonable(obj, depth: int = 0):
    """Best-effort conversion of engine config objects into JSON data (for provenance)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return str(obj.name if hasattr(obj, "name") else obj)
    if depth > 3:
        return str(obj)[:200]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in list(obj.items())[:100]}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in list(obj)[:100]]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            try:
                out[f.name] = _jsonable(getattr(obj, f.name), depth + 1)
            except Exception as exc:  # a lazily-computed field can raise; record, do not fail
                out[f.name] = f"<error: {exc}>"
        return out
    return str(obj)[:200]


PARALLEL_KEYS = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")


def _get(obj, *names, default=None):
    """First attribute among `names` that exists on `obj` (engine versions rename fields)."""
    for name in names:
        if obj is not None and hasattr(obj, name):
            try:
                return getattr(obj, name)
            except Exception:
                continue
    return default


def _hf_value(hf_config, name):
    if name == "rope_theta":
        return _rope_theta(hf_config)
    return getattr(hf_config, name, None)


def _rope_theta(hf_config):
    """The RoPE base the model is built with. transformers >= 5 configs (they define
    standardize_rope_params) keep it in rope_parameters, which is what vLLM's models read there;
    a top-level rope_theta (e.g. from hf_overrides) is then ignored by the model. Older configs
    are read by their rope_theta attribute (a rope_parameters dict is an unknown extra there)."""
    rope = getattr(hf_config, "rope_parameters", None)
    if hasattr(hf_config, "standardize_rope_params") and isinstance(rope, dict):
        if "rope_theta" in rope:
            return rope["rope_theta"]
        thetas = {v.get("rope_theta") for v in rope.values() if isinstance(v, dict)}
        if len(thetas) == 1:  # per-layer-type parameters with one base
            return thetas.pop()
    return getattr(hf_config, "rope_theta", None)


# ----------------------------------------------------------------------------- the configuration


def effective_config(llm, patches: dict) -> dict:
    """The configuration as the engine of `llm` resolved it, read from its live objects: "key"
    (curated values, same names on V0 and V1), "notes" (where a value is an engine behaviour
    rather than a config field), "patches" (parity's worker-side `patches`) and "raw" (every
    config section)."""
    import vllm  # lazy: vLLM, only in an engine's interpreter

    s = _sections(llm.llm_engine)
    notes: dict = {}
    live = vllm_patches.live_model_facts(llm) or {}
    platform = _platform()
    key = {
        **_engine_keys(s, vllm.__version__, platform, notes),
        **_model_keys(llm, s, patches, live, notes),
    }
    _identity_facts(s.hf, key, notes)
    return {
        "key": _jsonable(key),
        "notes": _jsonable(notes),
        "patches": _jsonable(patches),
        "raw": _raw(s.cfg),
    }


@dataclasses.dataclass
class _Sections:
    """An engine and its config sections as this vLLM version names them (None where missing)."""

    engine: object
    cfg: object
    model: object
    cache: object
    sched: object
    comp: object
    par: object
    hf: object
    is_v1: bool


def _sections(engine) -> _Sections:
    """The engine's config sections: from its vllm_config, or the model config on the engine
    (V0), and the model's hf_config; whether the engine is V1."""
    cfg = _get(engine, "vllm_config")
    model = _get(cfg, "model_config") or _get(engine, "model_config")
    return _Sections(
        engine=engine,
        cfg=cfg,
        model=model,
        cache=_get(cfg, "cache_config"),
        sched=_get(cfg, "scheduler_config"),
        comp=_get(cfg, "compilation_config"),
        par=_get(cfg, "parallel_config"),
        hf=_get(model, "hf_config"),
        is_v1=type(engine).__module__.startswith("vllm.v1."),
    )


def _platform():
    """The device type vLLM runs on (None when this vLLM cannot say)."""
    try:
        from vllm.platforms import current_platform  # lazy: vLLM is the engine's own

        return current_platform.device_type
    except Exception:
        return None


def _engine_keys(s: _Sections, version: str, platform, notes: dict) -> dict:
    """The engine's keys: its class and version, the platform, scheduling and caching behaviour,
    compilation, batch limits, the KV cache and parallelism."""
    enforce_eager = _get(s.model, "enforce_eager")
    engine = s.engine
    return {
        "engine_impl": f"{type(engine).__module__}.{type(engine).__name__}",
        "vllm_version": version,
        "vllm_use_v1_env": os.environ.get("VLLM_USE_V1"),
        "platform": platform,
        "enable_prefix_caching": _prefix_caching(s, notes),
        "enable_chunked_prefill": _get(
            s.sched, "enable_chunked_prefill", "chunked_prefill_enabled"
        ),
        "async_scheduling": _async_scheduling(s, notes),
        "cascade_attention": _cascade(s, notes),
        "enforce_eager": enforce_eager,
        "compilation_level": _jsonable(_get(s.comp, "mode", "level")),
        "cudagraph_mode": _cudagraph(s, enforce_eager, platform, notes),
        "max_num_seqs": _get(s.sched, "max_num_seqs"),
        "max_num_batched_tokens": _get(s.sched, "max_num_batched_tokens"),
        "max_model_len": _get(s.model, "max_model_len"),
        "block_size": _get(s.cache, "block_size"),
        "kv_cache_dtype": _jsonable(_get(s.cache, "cache_dtype")),
        **{name: _get(s.par, name) for name in PARALLEL_KEYS},
    }


def _prefix_caching(s: _Sections, notes: dict):
    """Prefix caching: V0 leaves the field None unless set and its block manager reads None as
    off; read the block manager itself where there is one."""
    prefix_caching = _get(s.cache, "enable_prefix_caching")
    schedulers = _get(s.engine, "scheduler")
    if isinstance(schedulers, list) and schedulers:
        manager = _get(schedulers[0], "block_manager")
        if hasattr(manager, "enable_caching"):
            prefix_caching = bool(manager.enable_caching)
            notes["enable_prefix_caching"] = "scheduler.block_manager.enable_caching"
    if prefix_caching is None:
        prefix_caching, notes["enable_prefix_caching"] = False, "unset: off"
    return prefix_caching


def _async_scheduling(s: _Sections, notes: dict):
    """Async scheduling: the scheduler config's on V1; V0 has none."""
    async_scheduling = _get(s.sched, "async_scheduling")
    if not s.is_v1:
        async_scheduling = False
        notes["async_scheduling"] = "V0 has no async scheduling"
    return async_scheduling


def _cascade(s: _Sections, notes: dict) -> str:
    """Cascade attention: a V1 feature (removed again in later V1 releases, where
    disable_cascade_attn defaults to True and does nothing); V0 never had it."""
    if not s.is_v1:
        notes["cascade_attention"] = "V0 has no cascade attention"
        return "not_applicable"
    return "off" if _get(s.model, "disable_cascade_attn") else "allowed"


def _cudagraph(s: _Sections, enforce_eager, platform, notes: dict):
    """The CUDA graph mode: the compilation config's; on V0 (no such field), captured on CUDA
    without enforce_eager only."""
    cudagraph = _jsonable(_get(s.comp, "cudagraph_mode"))
    if cudagraph is None and not s.is_v1:
        cudagraph = "NONE" if (enforce_eager or platform != "cuda") else "V0 capture"
        notes["cudagraph_mode"] = "V0: CUDA graphs only on CUDA without enforce_eager"
    return cudagraph


def _model_keys(llm, s: _Sections, patches: dict, live: dict, notes: dict) -> dict:
    """The model's keys: seed, dtypes, logprobs mode, generation defaults, and the identity
    facts the engine reads from its hf_config, generation config and tokenizer (`live`: what
    the live model says, where it is in this process)."""
    hf = s.hf
    return {
        "seed": _seed(s, notes),
        "dtype": str(_get(s.model, "dtype")),
        "head_dtype": _head_dtype(llm, s, patches, live, notes),
        "logprobs_mode": _logprobs_mode(s, notes),
        "generation_config_defaults": _jsonable(_generation_defaults(s.model)),
        "model.architectures": _jsonable(_hf_value(hf, "architectures")),
        "model.rope_theta": _model_rope_theta(hf, live, notes),
        "model.vocab_size": _hf_value(hf, "vocab_size"),
        "model.tie_word_embeddings": _hf_value(hf, "tie_word_embeddings"),
        "model.eos_token_id": _jsonable(_hf_value(hf, "eos_token_id")),
        "model.generation_eos_token_id": _jsonable(_generation_config(s.model).get("eos_token_id")),
        "model.tokenizer_eos_token_id": _tokenizer_eos(llm),
        "model.bos_token_id": _hf_value(hf, "bos_token_id"),
        "model.num_hidden_layers": _hf_value(hf, "num_hidden_layers"),
        "model.hidden_size": _hf_value(hf, "hidden_size"),
    }


def _seed(s: _Sections, notes: dict):
    """The global seed, or "unseeded"."""
    seed = _get(s.model, "seed")
    if seed is None:
        seed = "unseeded"
        notes["seed"] = "no global seed: only requests without a seed are affected"
    return seed


def _head_dtype(llm, s: _Sections, patches: dict, live: dict, notes: dict) -> str:
    """The lm_head's dtype: parity's fp32 head patch, the engine's own head_dtype option, the
    live model's head, or else the model dtype; the note says which."""
    if (patches.get("fp32_head") or {}).get("applied"):
        notes["head_dtype"] = "parity fp32 head patch"
        return "torch.float32"
    if vllm_patches.has_native_head_dtype(llm):
        notes["head_dtype"] = "model_config.head_dtype"
        return str(s.model.head_dtype)
    if "head_dtype" in live:
        notes["head_dtype"] = live.get("head_dtype_source")
        return live["head_dtype"]
    notes["head_dtype"] = "engine has no head_dtype option: model dtype"
    return str(_get(s.model, "dtype"))


def _logprobs_mode(s: _Sections, notes: dict):
    """The logprobs mode: the model config's; V0's sampler takes log_softmax after
    temperature, top-k/top-p and min_p."""
    logprobs_mode = _jsonable(_get(s.model, "logprobs_mode"))
    if logprobs_mode is None and not s.is_v1:
        logprobs_mode = "processed_logprobs"
        notes["logprobs_mode"] = "V0 sampler behaviour (no logprobs_mode option)"
    return logprobs_mode


def _generation_defaults(model_cfg):
    """The sampling defaults the model's generation config sets (a note when unreadable)."""
    try:
        return model_cfg.get_diff_sampling_param()
    except Exception as exc:
        return f"<unavailable: {exc}>"


def _generation_config(model_cfg) -> dict:
    """The model's generation config ({} when there is none or it is unreadable)."""
    try:
        return model_cfg.try_get_generation_config() or {}
    except Exception:
        return {}


def _model_rope_theta(hf, live: dict, notes: dict):
    """The RoPE base: the live model's rotary embedding where it can be read, else the
    hf_config's as the model reads it."""
    rope_theta = _hf_value(hf, "rope_theta")
    if live.get("rope_theta") is not None:
        rope_theta = live["rope_theta"]
        notes["model.rope_theta"] = "live model: rotary_emb.base"
    return rope_theta


def _tokenizer_eos(llm):
    """The engine's tokenizer's eos_token_id (None when it has none)."""
    try:
        return llm.get_tokenizer().eos_token_id
    except Exception:
        return None


def _identity_facts(hf, key: dict, notes: dict) -> None:
    """The rest of the identity facts, read from the engine's own hf_config by the rule the
    trainer side uses (parity/engines/identity.py); the live values in `key` take precedence."""
    try:
        import transformers  # lazy: transformers imports torch

        major = int(str(transformers.__version__).split(".")[0])
        facts = identity.config_facts(hf, transformers_major=major)
        for name in ("model.rope_scaling", "model.max_position_embeddings", "model.norm_eps"):
            if facts.get(name) is not None:
                key[name] = facts[name]
    except Exception as exc:  # an unread fact stays unknown, never guessed
        notes["model.identity_facts"] = f"not read: {type(exc).__name__}: {exc}"


# Every config section of the engine, as JSON data, for the report's raw configuration.
RAW_SECTIONS = (
    "model_config",
    "cache_config",
    "scheduler_config",
    "parallel_config",
    "compilation_config",
    "device_config",
    "load_config",
)


def _raw(cfg) -> dict:
    """Each config section the engine has (RAW_SECTIONS), as JSON data."""
    raw = {}
    for section in RAW_SECTIONS:
        obj = _get(cfg, section)
        if obj is not None:
            raw[section] = _jsonable(obj, depth=1)
    return raw
