"""The vllm.LLM of parity's engine worker (VllmHost): started with its engine args and patches,
its effective configuration (vllm_config.py), generate with logprobs, prefix-cache reset.
Worker-side: the standard library at import time, vLLM inside functions."""

from __future__ import annotations

import inspect
import os
import time

# Its siblings: by bare name when run in the worker script (the script's directory is
# sys.path[0]), or from the package when imported as parity.engines.vllm_host (tests). Only the
# standard library and vLLM otherwise: the V0 engine's interpreter has no parity.
if __package__:
    from parity.engines import vllm_config, vllm_patches, vllm_progress, vllm_registry
else:
    import vllm_config
    import vllm_patches
    import vllm_progress
    import vllm_registry


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
        # V0's model inspection from the disk cache (one interpreter start less); the engine's
        # own process inspects as vLLM does (it may fork its workers after).
        self.patches["modelinfo"] = vllm_registry.install(in_process=False)
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
        "raw" (every config section); vllm_config.effective_config."""
        return vllm_config.effective_config(self.llm, self.patches)

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
