"""In-memory weight updates, run where the model lives (`update.via = "tensors"`): the path NCCL
and IPC broadcasts of RL frameworks end in. The checkpoint's tensors are read as the trainer holds
them (Hugging Face names: q_proj, k_proj, v_proj and gate_proj, up_proj apart, so the model's
`load_weights` packs the fused qkv_proj / gate_up_proj itself) and handed to the model's
`load_weights`, one bucket of at most `bucket_mb` MiB at a time.

V1 (0.32) wraps the buckets in the layer-wise reload lifecycle its weight-transfer engines use
(`initialize_layerwise_reload` before the first bucket, `finalize_layerwise_reload` after the
last: vllm/distributed/weight_transfer/nccl_engine.py, ipc_engine.py): each layer is
re-processed (`process_weights_after_loading`: the CPU backend's pre-packed GEMM weights) once
all its tensors arrived. Without it, a plain `load_weights` on V1's CPU backend meets the
parameters the load-time repack emptied and raises (docs/measurements.md#tensors-update).
V0 (0.8.5) loads with `model.load_weights` alone, as its RL users did.

Imported by vllm_updates.py in the engine worker (V1 0.32 and the V0 0.8.5 env, which has no
parity package): standard library, torch, safetensors and vLLM only.
"""

from __future__ import annotations

import functools
import re
import time

if __package__:  # imported as parity.engines.vllm_tensors (tests)
    from parity.engines import vllm_evidence
else:  # inside the engine worker script and the V1 workers it reaches
    import vllm_evidence

# verl's RolloutConfig.update_weights_bucket_megabytes default: the trainer packs tensors into
# buckets of this size and the engine loads one bucket per load_weights call.
DEFAULT_BUCKET_MB = 512
MIB = 1 << 20


def _natural(name: str) -> list:
    """Sort key: layer indices as numbers (layers 2 before 10), as a trainer's state_dict orders
    them; the layer-wise reload then finishes one layer before the next starts."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def trainer_tensors(checkpoint: str):
    """(name, tensor) of a checkpoint directory in the trainer's order, read one at a time."""
    ckpt = vllm_evidence.Checkpoint(checkpoint)
    for name in sorted(ckpt.keys(), key=_natural):
        yield name, ckpt[name]


def buckets(named, bucket_mb: float):
    """Group (name, tensor) pairs into lists of at most bucket_mb MiB (a tensor larger than a
    bucket goes alone), in order."""
    limit = bucket_mb * MIB
    current, size = [], 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > limit:
            yield current
            current, size = [], 0
        current.append((name, tensor))
        size += nbytes
    if current:
        yield current


def push(model, checkpoint: str, bucket_mb: float = DEFAULT_BUCKET_MB, model_config=None) -> dict:
    """Load a checkpoint's tensors into `model` bucket by bucket through its `load_weights`.
    With model_config (V1), inside the layer-wise reload lifecycle (see the module doc).

    Returns:
        {"bucket_mb", "buckets": [{"tensors", "mb", "load_s"}], "tensors" (sent), "loaded"
        (parameter names load_weights reports, None if it reports none), "layerwise" (bool),
        "finalize_s"}.
    """
    import torch  # lazy: torch takes seconds to import

    layerwise = model_config is not None
    if layerwise:
        # lazy: vLLM, only in the engine's worker
        from vllm.model_executor.model_loader.reload import (
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )
    out = {"bucket_mb": bucket_mb, "buckets": [], "tensors": 0, "layerwise": layerwise}
    loaded: set | None = None
    with torch.no_grad():
        if layerwise:
            initialize_layerwise_reload(model)
        try:
            for bucket in buckets(trainer_tensors(checkpoint), bucket_mb):
                t0 = time.perf_counter()
                names = model.load_weights(iter(bucket))
                out["buckets"].append(
                    {
                        "tensors": len(bucket),
                        "mb": sum(t.numel() * t.element_size() for _, t in bucket) / MIB,
                        "load_s": time.perf_counter() - t0,
                    }
                )
                out["tensors"] += len(bucket)
                if names is not None:
                    loaded = (loaded or set()) | set(names)
        finally:
            t0 = time.perf_counter()
            if layerwise:  # also on failure: puts the kept kernel tensors back
                finalize_layerwise_reload(model, model_config)
            out["finalize_s"] = time.perf_counter() - t0
    out["loaded"] = None if loaded is None else len(loaded)
    return out


def push_on_worker(worker, checkpoint: str, bucket_mb: float = DEFAULT_BUCKET_MB) -> dict:
    """collective_rpc target on V1 workers: push() into the worker's model, under its config
    (as the worker's own reload_weights and update_weights run)."""
    from vllm.config import set_current_vllm_config  # lazy: vLLM, in the worker only

    with set_current_vllm_config(worker.vllm_config):
        return push(worker.get_model(), checkpoint, bucket_mb, worker.vllm_config.model_config)


def load(llm, checkpoint: str, bucket_mb: float, v1: bool) -> dict:
    """The update of a live engine (`vllm.LLM`) through push(), where its model lives: V1's
    workers through collective_rpc (this module must be importable there: see
    vllm_updates.Updater._load), V0's through apply_model. Returns the update record's part."""
    if v1:
        out = llm.collective_rpc(push_on_worker, args=(checkpoint, bucket_mb))[0]
        how = "initialize_layerwise_reload, model.load_weights per bucket, finalize"
    else:
        out = llm.apply_model(functools.partial(push, checkpoint=checkpoint, bucket_mb=bucket_mb))[
            0
        ]
        how = "model.load_weights per bucket"
    return {"mechanism": f"in-memory tensors, {bucket_mb:g} MiB buckets: {how}", **out}
