"""The vllm.LLM of parity's engine worker (VllmHost): started with its engine args and patches,
its effective configuration read from the live objects, generate with logprobs, prefix-cache reset.
Worker-side: the standard library at import time, vLLM and transformers inside functions."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import os
import time

# Its siblings: by bare name when run in the worker script (the script's directory is
# sys.path[0]), or from the package when imported as parity.engines.vllm_host (tests). Only the
# standard library and vLLM otherwise: the V0 engine's interpreter has no parity.
if __package__:
    from parity.engines import identity, vllm_patches, vllm_progress
else:
    import identity
    import vllm_patches
    import vllm_progress


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


# ----------------------------------------------------------------------------- the engine


class VllmHost:
    """Owns the vllm.LLM instance of this process."""

    def __init__(self) -> None:
        self.llm = None
        self.weight_version = 0
        self.patches: dict = {}

    def start(self, model: str, engine_args: dict) -> dict:
        import vllm  # lazy: vLLM, only in an engine's interpreter

        t0 = time.perf_counter()
        self.llm = vllm.LLM(model=model, **engine_args)
        if vllm_patches.fp32_head_requested(os.environ):
            # After load, in the worker that holds the model: V0 has no head_dtype option.
            self.patches["fp32_head"] = vllm_patches.apply_fp32_head(self.llm)
        # Applied at each reload (vllm_updates.Updater); reported whether on or off.
        self.patches["reload_reprocess"] = vllm_patches.reload_reprocess_requested(os.environ)
        return {"start_s": time.perf_counter() - t0, "effective_config": self.effective_config()}

    def effective_config(self) -> dict:
        """The configuration as this engine resolved it, read from its live objects: "key"
        (curated values, same names on V0 and V1), "notes" (where a value is an engine
        behaviour rather than a config field), "patches" (parity's worker-side patches) and
        "raw" (every config section)."""
        import vllm  # lazy: vLLM, only in an engine's interpreter

        engine = self.llm.llm_engine
        cfg = _get(engine, "vllm_config")
        model_cfg = _get(cfg, "model_config") or _get(engine, "model_config")
        cache_cfg = _get(cfg, "cache_config")
        sched_cfg = _get(cfg, "scheduler_config")
        comp_cfg = _get(cfg, "compilation_config")
        par_cfg = _get(cfg, "parallel_config")
        hf = _get(model_cfg, "hf_config")
        is_v1 = type(engine).__module__.startswith("vllm.v1.")
        notes: dict = {}
        live = vllm_patches.live_model_facts(self.llm) or {}
        try:
            from vllm.platforms import current_platform  # lazy: vLLM is the engine's own

            platform = current_platform.device_type
        except Exception:
            platform = None
        try:
            gen_defaults = model_cfg.get_diff_sampling_param()
        except Exception as exc:
            gen_defaults = f"<unavailable: {exc}>"
        try:
            gen_config = model_cfg.try_get_generation_config() or {}
        except Exception:
            gen_config = {}

        # Prefix caching: V0 leaves the field None unless set and its block manager reads None
        # as off; read the block manager itself where there is one.
        prefix_caching = _get(cache_cfg, "enable_prefix_caching")
        schedulers = _get(engine, "scheduler")
        if isinstance(schedulers, list) and schedulers:
            manager = _get(schedulers[0], "block_manager")
            if hasattr(manager, "enable_caching"):
                prefix_caching = bool(manager.enable_caching)
                notes["enable_prefix_caching"] = "scheduler.block_manager.enable_caching"
        if prefix_caching is None:
            prefix_caching, notes["enable_prefix_caching"] = False, "unset: off"

        async_scheduling = _get(sched_cfg, "async_scheduling")
        if not is_v1:
            async_scheduling = False
            notes["async_scheduling"] = "V0 has no async scheduling"

        # Cascade attention: a V1 feature (removed again in later V1 releases, where
        # disable_cascade_attn defaults to True and does nothing); V0 never had it.
        if not is_v1:
            cascade = "not_applicable"
            notes["cascade_attention"] = "V0 has no cascade attention"
        else:
            cascade = "off" if _get(model_cfg, "disable_cascade_attn") else "allowed"

        enforce_eager = _get(model_cfg, "enforce_eager")
        cudagraph = _jsonable(_get(comp_cfg, "cudagraph_mode"))
        if cudagraph is None and not is_v1:
            cudagraph = "NONE" if (enforce_eager or platform != "cuda") else "V0 capture"
            notes["cudagraph_mode"] = "V0: CUDA graphs only on CUDA without enforce_eager"

        seed = _get(model_cfg, "seed")
        if seed is None:
            seed = "unseeded"
            notes["seed"] = "no global seed: only requests without a seed are affected"

        if (self.patches.get("fp32_head") or {}).get("applied"):
            head_dtype = "torch.float32"
            notes["head_dtype"] = "parity fp32 head patch"
        elif vllm_patches.has_native_head_dtype(self.llm):
            head_dtype = str(model_cfg.head_dtype)
            notes["head_dtype"] = "model_config.head_dtype"
        elif "head_dtype" in live:
            head_dtype = live["head_dtype"]
            notes["head_dtype"] = live.get("head_dtype_source")
        else:
            head_dtype = str(_get(model_cfg, "dtype"))
            notes["head_dtype"] = "engine has no head_dtype option: model dtype"

        logprobs_mode = _jsonable(_get(model_cfg, "logprobs_mode"))
        if logprobs_mode is None and not is_v1:
            # V0's sampler takes log_softmax after temperature, top-k/top-p and min_p.
            logprobs_mode = "processed_logprobs"
            notes["logprobs_mode"] = "V0 sampler behaviour (no logprobs_mode option)"

        rope_theta = _hf_value(hf, "rope_theta")
        if live.get("rope_theta") is not None:
            rope_theta = live["rope_theta"]
            notes["model.rope_theta"] = "live model: rotary_emb.base"
        try:
            tokenizer_eos = self.llm.get_tokenizer().eos_token_id
        except Exception:
            tokenizer_eos = None
        key = {
            "engine_impl": f"{type(engine).__module__}.{type(engine).__name__}",
            "vllm_version": vllm.__version__,
            "vllm_use_v1_env": os.environ.get("VLLM_USE_V1"),
            "platform": platform,
            "enable_prefix_caching": prefix_caching,
            "enable_chunked_prefill": _get(
                sched_cfg, "enable_chunked_prefill", "chunked_prefill_enabled"
            ),
            "async_scheduling": async_scheduling,
            "cascade_attention": cascade,
            "enforce_eager": enforce_eager,
            "compilation_level": _jsonable(_get(comp_cfg, "mode", "level")),
            "cudagraph_mode": cudagraph,
            "max_num_seqs": _get(sched_cfg, "max_num_seqs"),
            "max_num_batched_tokens": _get(sched_cfg, "max_num_batched_tokens"),
            "max_model_len": _get(model_cfg, "max_model_len"),
            "block_size": _get(cache_cfg, "block_size"),
            "kv_cache_dtype": _jsonable(_get(cache_cfg, "cache_dtype")),
            **{name: _get(par_cfg, name) for name in PARALLEL_KEYS},
            "seed": seed,
            "dtype": str(_get(model_cfg, "dtype")),
            "head_dtype": head_dtype,
            "logprobs_mode": logprobs_mode,
            "generation_config_defaults": _jsonable(gen_defaults),
            "model.architectures": _jsonable(_hf_value(hf, "architectures")),
            "model.rope_theta": rope_theta,
            "model.vocab_size": _hf_value(hf, "vocab_size"),
            "model.tie_word_embeddings": _hf_value(hf, "tie_word_embeddings"),
            "model.eos_token_id": _jsonable(_hf_value(hf, "eos_token_id")),
            "model.generation_eos_token_id": _jsonable(gen_config.get("eos_token_id")),
            "model.tokenizer_eos_token_id": tokenizer_eos,
            "model.bos_token_id": _hf_value(hf, "bos_token_id"),
            "model.num_hidden_layers": _hf_value(hf, "num_hidden_layers"),
            "model.hidden_size": _hf_value(hf, "hidden_size"),
        }
        # The rest of the identity facts, read from the engine's own hf_config by the rule the
        # trainer side uses (parity/engines/identity.py); the live values above take precedence.
        try:
            import transformers  # lazy: transformers imports torch

            major = int(str(transformers.__version__).split(".")[0])
            facts = identity.config_facts(hf, transformers_major=major)
            for name in ("model.rope_scaling", "model.max_position_embeddings", "model.norm_eps"):
                if facts.get(name) is not None:
                    key[name] = facts[name]
        except Exception as exc:  # an unread fact stays unknown, never guessed
            notes["model.identity_facts"] = f"not read: {type(exc).__name__}: {exc}"
        raw = {}
        for section in (
            "model_config",
            "cache_config",
            "scheduler_config",
            "parallel_config",
            "compilation_config",
            "device_config",
            "load_config",
        ):
            obj = _get(cfg, section)
            if obj is not None:
                raw[section] = _jsonable(obj, depth=1)
        return {
            "key": _jsonable(key),
            "notes": _jsonable(notes),
            "patches": _jsonable(self.patches),
            "raw": raw,
        }

    def generate(self, prompts: list[list[int]], sampling: dict) -> dict:
        from vllm import SamplingParams  # lazy: vLLM, only in an engine's interpreter

        params = []
        for i in range(len(prompts)):
            kwargs = dict(
                n=sampling["n"],
                temperature=sampling["temperature"],
                top_p=sampling["top_p"],
                top_k=sampling["top_k"] if sampling["top_k"] > 0 else -1,
                max_tokens=sampling["max_tokens"],
                logprobs=sampling["logprobs"],
            )
            if sampling.get("seed") is not None:
                kwargs["seed"] = sampling["seed"] + i
            if sampling.get("prompt_logprobs") is not None:
                kwargs["prompt_logprobs"] = sampling["prompt_logprobs"]
            params.append(SamplingParams(**kwargs))
        inputs = [{"prompt_token_ids": list(p)} for p in prompts]
        t0 = time.perf_counter()
        outputs = self._generate(inputs, params)
        elapsed = time.perf_counter() - t0
        sequences = []
        for prompt_index, request in enumerate(outputs):
            for completion in request.outputs:
                token_ids = list(completion.token_ids)
                positions = completion.logprobs or []
                logprobs, top = [], []
                for tok, pos in zip(token_ids, positions):
                    logprobs.append(float(pos[tok].logprob))
                    top.append({str(t): float(lp.logprob) for t, lp in pos.items()})
                sequences.append(
                    {
                        "prompt_index": prompt_index,
                        "sample_index": completion.index,
                        "prompt_token_ids": list(request.prompt_token_ids),
                        "token_ids": token_ids,
                        "logprobs": logprobs,
                        "top_logprobs": top if sampling["logprobs"] > 0 else None,
                        "finish_reason": completion.finish_reason,
                        "text": completion.text,
                        "weight_versions": [self.weight_version] * len(token_ids),
                        "prompt_logprobs": _prompt_logprobs(request),
                        "num_cached_tokens": getattr(request, "num_cached_tokens", None),
                    }
                )
        n_tokens = sum(len(s["token_ids"]) for s in sequences)
        return {"sequences": sequences, "generate_s": elapsed, "n_tokens": n_tokens}

    def _generate(self, inputs, params):
        """llm.generate, with finished requests reported to the harness as they finish (vLLM's
        progress bar hook: a callable use_tqdm on V1; V0 takes only a bool, so its module's
        tqdm is swapped for the call)."""
        if vllm_progress.PROGRESS["send"] is None:
            return self.llm.generate(inputs, params, use_tqdm=False)

        param = inspect.signature(self.llm.generate).parameters.get("use_tqdm")
        if param is not None and "Callable" in str(param.annotation):  # vLLM >= 0.9
            return self.llm.generate(inputs, params, use_tqdm=vllm_progress.bar)
        import vllm.entrypoints.llm as llm_module  # 0.8.5: `use_tqdm: bool`, module tqdm

        saved = llm_module.tqdm
        llm_module.tqdm = vllm_progress.bar
        try:
            return self.llm.generate(inputs, params, use_tqdm=True)
        finally:
            llm_module.tqdm = saved

    def reset_prefix_cache(self) -> dict:
        """Drop every cached KV block, so the next request computes its prompt from scratch."""
        return {"reset": bool(self.llm.reset_prefix_cache())}

    def close(self) -> None:
        self.llm = None


def _prompt_logprobs(request) -> list | None:
    """Logprob of each prompt token given the ones before it (None at position 0), when the
    request asked for prompt logprobs."""
    positions = getattr(request, "prompt_logprobs", None)
    if positions is None:
        return None
    out = []
    for tok, pos in zip(request.prompt_token_ids, positions):
        out.append(None if not pos else float(pos[tok].logprob))
    return out
