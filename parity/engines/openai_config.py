"""The effective configuration of a served engine, from what a vLLM server exposes: /v1/models,
/version, and /server_info (JSON on vLLM >= 0.9, a text dump on 0.8.5). Pure functions."""

from __future__ import annotations

import re
from typing import Any

from parity.engines.vllm_config import PARALLEL_KEYS

# Identity facts no OpenAI endpoint of vLLM exposes (its /server_info config dump leaves out
# hf_config, the tokenizer and the generation config): reported unknown, never guessed.
NOT_EXPOSED = (
    "model.architectures",
    "model.rope_theta",
    "model.rope_scaling",
    "model.max_position_embeddings",
    "model.vocab_size",
    "model.tie_word_embeddings",
    "model.eos_token_id",
    "model.generation_eos_token_id",
    "model.tokenizer_eos_token_id",
    "model.stop_token_ids",
    "model.sampling_defaults",
    "model.bos_token_id",
    "model.norm_eps",
    "model.num_hidden_layers",
    "model.hidden_size",
)

_TEXT_FIELDS = {
    "dtype": ("model_config", "dtype"),
    "max_seq_len": ("model_config", "max_model_len"),
    "enforce_eager": ("model_config", "enforce_eager"),
    "seed": ("model_config", "seed"),
    "kv_cache_dtype": ("cache_config", "cache_dtype"),
    "enable_prefix_caching": ("cache_config", "enable_prefix_caching"),
    "chunked_prefill_enabled": ("scheduler_config", "enable_chunked_prefill"),
    "device_config": ("device_config", "device"),
}


def _text_config(text: str) -> dict:
    """The plain fields of a text config dump as the JSON dump's sections ("None" stays
    unknown: V0 leaves enable_prefix_caching None when not set)."""
    out: dict[str, dict] = {}
    for name, (section, field) in _TEXT_FIELDS.items():
        m = re.search(rf"(?:^|[\s,]){name}=([^,\s]+)", text)
        if m is None:
            continue
        raw = m.group(1).strip("'\"")
        value: Any = {"True": True, "False": False, "None": None}.get(raw, raw)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if value is not None:
            out.setdefault(section, {})[field] = value
    return out


def served_config(model_entry: dict, version: Any, info: Any, url: str) -> dict[str, Any]:
    """The effective configuration of a served engine from what it exposes: /v1/models (the
    model, max_model_len), /version, and /server_info (vLLM >= 0.9 in JSON; only with
    VLLM_SERVER_DEV_MODE=1 on the server). Every value it does not expose is None (unknown),
    with the reason in "notes"; "not_exposed" lists the model-identity keys no endpoint gives.
    """
    notes: dict[str, str] = {}
    cfg = _server_config(info, notes)
    env = (info or {}).get("vllm_env") if isinstance(info, dict) else None
    vllm_version = version.get("version") if isinstance(version, dict) else None
    if vllm_version is None:
        notes["vllm_version"] = "/version not exposed"
    key = {
        "engine_impl": _engine_impl(vllm_version, env, notes),
        "vllm_version": vllm_version,
        "vllm_use_v1_env": (env or {}).get("VLLM_USE_V1") if isinstance(env, dict) else None,
        **_config_keys(cfg, model_entry, notes),
        "served_model": model_entry.get("id"),
        "served_model_root": model_entry.get("root"),
        "url": url,
    }
    _unknown_notes(key, cfg, notes)
    return {
        "key": key,
        "notes": notes,
        "patches": {},
        "not_exposed": list(NOT_EXPOSED),
        "raw": {"v1_models": model_entry, "version": version, "server_info": cfg},
    }


def _server_config(info: Any, notes: dict[str, str]) -> dict:
    """The server's configuration sections from /server_info: its JSON, the plain fields of
    vLLM 0.8.5's text dump, or {} when the server does not expose it (noted either way)."""
    cfg = (info or {}).get("vllm_config") if isinstance(info, dict) else None
    if isinstance(cfg, str):  # vLLM 0.8.5's /server_info: str(VllmConfig), a text dump
        notes["server_info"] = (
            "text only (vLLM < 0.9): read its plain fields; the rest "
            "(logprobs mode, async scheduling, cascade attention) unknown"
        )
        cfg = _text_config(cfg)
    if cfg is None and "server_info" not in notes:
        notes["server_info"] = (
            "not exposed: start the server with VLLM_SERVER_DEV_MODE=1 "
            "(parity serve does) to read its configuration"
        )
    return cfg if isinstance(cfg, dict) else {}


def _engine_impl(vllm_version: str | None, env: Any, notes: dict[str, str]) -> str | None:
    """The engine class: V1's on vLLM >= 0.11 (it has no other), else by the server's
    VLLM_USE_V1; None (unknown) when neither says."""
    major_minor = re.match(r"(\d+)\.(\d+)", vllm_version or "")
    if major_minor and (int(major_minor.group(1)), int(major_minor.group(2))) >= (0, 11):
        notes["engine_impl"] = "vLLM >= 0.11 has only the V1 engine (from /version)"
        return "vllm.v1.engine.async_llm.AsyncLLM"
    if isinstance(env, dict) and "VLLM_USE_V1" in env:
        notes["engine_impl"] = "from the server's VLLM_USE_V1 (/server_info)"
        return (
            "vllm.v1.engine.async_llm.AsyncLLM"
            if env["VLLM_USE_V1"] in (True, 1, "1")
            else "vllm.engine.async_llm_engine.AsyncLLMEngine"
        )
    notes["engine_impl"] = "unknown: the server exposes no engine class and no VLLM_USE_V1"
    return None


def _config_keys(cfg: dict, model_entry: dict, notes: dict[str, str]) -> dict[str, Any]:
    """The keys read from the server's configuration sections, as VllmHost names them
    (max_model_len from /v1/models when the configuration has none)."""
    model_cfg = cfg.get("model_config") or {}
    cache_cfg = cfg.get("cache_config") or {}
    sched_cfg = cfg.get("scheduler_config") or {}
    comp_cfg = cfg.get("compilation_config") or {}
    device_cfg = cfg.get("device_config") or {}
    par_cfg = cfg.get("parallel_config") or {}
    cascade = None
    if "disable_cascade_attn" in model_cfg:
        cascade = "off" if model_cfg["disable_cascade_attn"] else "allowed"
    return {
        "platform": device_cfg.get("device_type", device_cfg.get("device")),
        "enable_prefix_caching": cache_cfg.get("enable_prefix_caching"),
        "enable_chunked_prefill": sched_cfg.get("enable_chunked_prefill"),
        "async_scheduling": sched_cfg.get("async_scheduling"),
        "cascade_attention": cascade,
        "enforce_eager": model_cfg.get("enforce_eager"),
        "compilation_level": comp_cfg.get("mode", comp_cfg.get("level")),
        "cudagraph_mode": comp_cfg.get("cudagraph_mode"),
        "max_num_seqs": sched_cfg.get("max_num_seqs"),
        "max_num_batched_tokens": sched_cfg.get("max_num_batched_tokens"),
        "max_model_len": model_cfg.get("max_model_len", model_entry.get("max_model_len")),
        "block_size": cache_cfg.get("block_size"),
        "kv_cache_dtype": cache_cfg.get("cache_dtype"),
        **{name: par_cfg.get(name) for name in PARALLEL_KEYS},
        "seed": model_cfg.get("seed"),
        "dtype": model_cfg.get("dtype"),
        "head_dtype": _head_dtype(model_cfg, notes),
        "logprobs_mode": model_cfg.get("logprobs_mode"),
    }


def _head_dtype(model_cfg: dict, notes: dict[str, str]) -> str | None:
    """The lm_head's dtype: an hf_overrides head_dtype, else the model dtype (None: unknown)."""
    hf_overrides = model_cfg.get("hf_overrides")
    if isinstance(hf_overrides, dict) and hf_overrides.get("head_dtype"):
        notes["head_dtype"] = "model_config.hf_overrides.head_dtype"
        return str(hf_overrides["head_dtype"])
    if model_cfg.get("dtype") is not None:
        notes["head_dtype"] = "no head_dtype override: the model dtype"
        return str(model_cfg["dtype"])
    return None


def _unknown_notes(key: dict[str, Any], cfg: dict, notes: dict[str, str]) -> None:
    """Why each unknown (None) key is unknown: the logprobs mode's reason, then "not exposed by
    the server" for every other without a note."""
    if key["logprobs_mode"] is None and cfg:  # vLLM < 0.9: no such option to report
        notes["logprobs_mode"] = (
            "unknown: this vLLM's server info has no logprobs mode "
            "(V0's sampler returns processed logprobs, but the server "
            "does not say it runs V0)"
        )
    elif key["logprobs_mode"] is None:
        notes["logprobs_mode"] = (
            "unknown: the server's --logprobs-mode is not exposed "
            "(VLLM_SERVER_DEV_MODE=1 exposes it)"
        )
    for name, value in key.items():
        if value is None and name not in notes:
            notes[name] = "unknown: not exposed by the server"
