"""A weight_update scenario's `update` table: its fields, their checks, and the tolerance its
judging uses per dtype (parity.trainer.updates holds the trainer side)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.engines.vllm_tensors import DEFAULT_BUCKET_MB

PROBES = ("takes_effect", "stale_cache", "inflight", "nopause")
VIAS = ("reload", "tensors", "transfer", "inplace")
# vLLM 0.32's weight-transfer backends (vllm/distributed/weight_transfer/factory.py); which run
# where is vLLM's to say (parity.engines.vllm_transfer.refusal, before any engine start).
BACKENDS = ("nccl", "ipc", "sparse_nccl", "nccl_m2n", "sharded_rdt", "modelexpress")
MODES = ("keep", "wait", "abort")
SEMANTICS = ("keep", "recompute")
# Two hypotheses (old vs new weights, keep vs recompute, stale vs fresh KV) are told apart only
# when the references they predict differ by this many tolerances; closer, the verdict says so.
SEPARATION = 3.0
DEFAULT_TOLERANCE = 0.05  # mean |dlogp| to the matching reference (bf16 noise ~0.04: docs/measurements.md#measured-gaps)
# The same in fp32 (model and trainer both fp32): a correct update is judged at ~1.1e-3 on
# SmolLM2 and ~7e-7 on the tiny model, so a bf16 tolerance would hide a stale layer or a whole
# RL-step update (~1e-2) that did not land (docs/measurements.md#update-noise-fp32).
FP32_TOLERANCE = 0.004


def tolerance(tolerances: dict[str, float], dtype: str | None) -> float:
    """The tolerance of a judged run: `abs_dlogp_mean_fp32` when the engine ran fp32, else
    `abs_dlogp_mean` (bf16, fp16, or a dtype not known)."""
    if dtype == "float32":
        return tolerances.get("abs_dlogp_mean_fp32", FP32_TOLERANCE)
    return tolerances.get("abs_dlogp_mean", DEFAULT_TOLERANCE)


@dataclass(frozen=True)
class UpdateSpec:
    """The `update` table of a weight_update scenario.

    Attributes:
        target: the new weights: a model name or checkpoint directory; None = the scenario's
            model trained `train_steps` optimizer steps (parity.setup.trainstep: the size of one
            RL step), or with train_steps 0 a perturbed copy of it (`parity models perturb
            MODEL --seed --scale`: a coarse control, logprobs move by nats).
        seed, scale: the perturbation, when target is None and train_steps is 0; seed also
            seeds the training step.
        train_steps, lr: the training step (AdamW steps and learning rate), when target is None.
        via: "reload" (the engine's real update path: reload_weights from disk), "tensors" (the
            checkpoint's tensors, as a trainer holds them, into the model's load_weights in
            buckets: the path NCCL/IPC broadcasts end in; parity.engines.vllm_tensors),
            "transfer" (vLLM 0.32's weight-transfer API over `backend`) or "inplace"
            (param.data.copy_ into the live parameters: the negative control).
        bucket_mb: tensors and transfer: MiB of tensors per load_weights call (verl's default).
        backend: transfer: the weight-transfer backend (the engine needs
            engine_args.weight_transfer_config = { backend = ... } too).
        mode: in-flight requests during the update: "keep" | "wait" | "abort".
        clear_cache: drop the prefix cache (KV computed with the old weights) with the update.
        after_tokens: inflight probe: update once every request has sampled this many tokens.
        expect_semantics: inflight probe: "keep" (continue on the old KV) or "recompute".
        ignore_eos: inflight probe: sample through EOS so every request spans the update.
        context_tokens: stale_cache probe: tokens of shared context put before every prompt so
            it fills whole cache blocks; None = one block of the engine's KV cache.
        stale_layers: a negative control: the engine is pushed the new checkpoint with these
            decoder layers holding the old weights, while the trainer holds the whole new one;
            the attribution must name them.
        buckets: nopause probe: the update is pushed in this many buckets, one per engine
            step on V1 (parity.trainer.schedules.layout).
        late_prompts: nopause probe: the last this many prompts arrive after the trigger.
        pause: nopause probe: the control, the update with a pause (mode keep or wait).
        mixed_tokens_limit: nopause probe: tokens sampled from mixed weights allowed.
    """

    target: str | None = None
    seed: int = 1
    scale: float = 1.0
    via: str = "reload"
    mode: str = "keep"
    clear_cache: bool = False
    after_tokens: int = 8
    expect_semantics: str = "keep"
    ignore_eos: bool = True
    context_tokens: int | None = None
    stale_layers: tuple[int, ...] = ()
    train_steps: int = 0
    lr: float = 1e-5
    bucket_mb: float = DEFAULT_BUCKET_MB
    backend: str | None = None
    buckets: int = 4
    late_prompts: int = 0
    pause: bool = False
    mixed_tokens_limit: int = 0

    def transport(self) -> dict:
        """The engine's update_weights keywords beyond (checkpoint, mode, clear_cache, via)."""
        if self.via == "transfer":
            return {"bucket_mb": self.bucket_mb, "backend": self.backend}
        return {"bucket_mb": self.bucket_mb} if self.via == "tensors" else {}


_FIELD_TYPES = {
    "target": str,
    "seed": int,
    "scale": float,
    "via": str,
    "mode": str,
    "clear_cache": bool,
    "after_tokens": int,
    "expect_semantics": str,
    "ignore_eos": bool,
    "context_tokens": int,
    "stale_layers": list,
    "train_steps": int,
    "lr": float,
    "bucket_mb": float,
    "backend": str,
    "buckets": int,
    "late_prompts": int,
    "pause": bool,
    "mixed_tokens_limit": int,
}
_CHOICES = {"via": VIAS, "mode": MODES, "expect_semantics": SEMANTICS, "backend": BACKENDS}


def parse_update(table: Any, path: str) -> tuple[UpdateSpec | None, list[tuple[str, str, str]]]:
    """Validate a scenario's `update` table; returns (spec or None, every problem found)."""
    if table is None:
        return UpdateSpec(), []
    if not isinstance(table, dict):
        return None, [(path, "update", "must be a table, e.g. update = { scale = 1.0 }")]
    problems, kwargs = [], {}
    for key, value in table.items():
        typ = _FIELD_TYPES.get(key)
        fld = f"update.{key}"
        if typ is None:
            problems.append((path, fld, f"unknown field; allowed: {', '.join(_FIELD_TYPES)}"))
        elif not (isinstance(value, typ) or (typ is float and isinstance(value, int))) or (
            typ is not bool and isinstance(value, bool)
        ):
            problems.append((path, fld, f"expected {typ.__name__}, got {value!r}"))
        elif key in _CHOICES and value not in _CHOICES[key]:
            problems.append((path, fld, f"{value!r}: use one of {', '.join(_CHOICES[key])}"))
        elif key == "buckets" and value < 1:
            problems.append((path, fld, "must be >= 1"))
        elif (
            key
            in (
                "after_tokens",
                "context_tokens",
                "train_steps",
                "late_prompts",
                "mixed_tokens_limit",
            )
            and value < 0
        ):
            problems.append((path, fld, "must be >= 0"))
        elif key in ("lr", "bucket_mb") and not (np.isfinite(value) and value > 0):
            problems.append((path, fld, "must be a finite number > 0"))
        elif key == "scale" and not (np.isfinite(value) and value > 0):
            problems.append((path, fld, "must be a finite number > 0 (0 would be no update)"))
        elif key == "stale_layers":
            if not value or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 10_000 for i in value
            ):
                problems.append(
                    (path, fld, "must be a non-empty list of decoder layer indices, e.g. [1]")
                )
            else:
                kwargs[key] = tuple(sorted(set(value)))
        else:
            kwargs[key] = typ(value)
    if kwargs.get("train_steps") and "scale" in kwargs:
        problems.append(
            (path, "update.scale", "a perturbation's; a training step (train_steps) takes lr")
        )
    if "lr" in kwargs and not kwargs.get("train_steps"):
        problems.append((path, "update.lr", "only with update.train_steps >= 1"))
    problems += _transport_problems(kwargs, path)
    return (None, problems) if problems else (UpdateSpec(**kwargs), [])


def _transport_problems(kwargs: dict, path: str) -> list[tuple[str, str, str]]:
    """bucket_mb only with via tensors or transfer; backend with (and only with) transfer."""
    via, out = kwargs.get("via", "reload"), []
    if "bucket_mb" in kwargs and via not in ("tensors", "transfer"):
        out.append((path, "update.bucket_mb", 'only with update.via = "tensors" or "transfer"'))
    if via == "transfer" and "backend" not in kwargs:
        out.append((path, "update.backend", f'via = "transfer" needs one: {", ".join(BACKENDS)}'))
    if "backend" in kwargs and via != "transfer":
        out.append((path, "update.backend", 'only with update.via = "transfer"'))
    return out
