"""Loading a checkpoint for the trainer side without made-up weights: transformers initialises
every tensor a checkpoint lacks (or holds in another shape) at random and only logs a load
report ("MISSING"), so a reference would score with random weights. Here such a checkpoint is
refused, naming the tensors; a tensor that is legitimately absent (an lm_head tied to the
embeddings) is not missing, by transformers' own tie rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parity.trainer.heads import ReferenceError

# Names shown in a refusal before "and N more".
SHOWN = 8


class InventedWeightsError(ReferenceError):
    """A checkpoint whose tensors transformers would make up (missing, or another shape)."""

    def __init__(self, path: str, invented: list[str], role: str = "checkpoint"):
        self.path = path
        self.invented = invented
        super().__init__(refusal(path, invented, role))


def refusal(path: str, invented: list[str], role: str = "checkpoint") -> str:
    """The message refusing a checkpoint: which tensors it lacks, and the fix."""
    shown = ", ".join(invented[:SHOWN])
    more = f" and {len(invented) - SHOWN} more" if len(invented) > SHOWN else ""
    return (
        f"the {role} {Path(path).name} lacks {len(invented)} tensor(s) its architecture needs "
        f"({shown}{more}): transformers would initialise them at random and the trainer would "
        "score with made-up weights; save the complete state dict (only a tied lm_head may be "
        "absent)"
    )


def invented_tensors(info: dict[str, Any]) -> list[str]:
    """The tensors a transformers load report (`output_loading_info`) says were made up: the
    missing keys and the keys whose checkpoint shape differs, sorted. A tied lm_head that the
    checkpoint leaves out is not in the report's missing keys."""
    missing = set(info.get("missing_keys") or ())
    mismatched = {
        m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys") or ()
    }
    return sorted(missing | mismatched)


def check_checkpoint(model_path: str | Path) -> list[str]:
    """The tensors transformers would make up loading `model_path`, found without reading any
    weights (the model is built on the meta device: a fraction of a second for a 135M model).
    [] when the checkpoint is complete."""
    from transformers import AutoModelForCausalLM  # lazy: transformers imports torch
    from transformers.utils import logging  # lazy: transformers imports torch

    level = logging.get_verbosity()
    logging.set_verbosity_error()  # its load report: the refusal names the same tensors
    try:
        _, info = AutoModelForCausalLM.from_pretrained(
            str(model_path), dtype="auto", device_map="meta", output_loading_info=True
        )
    finally:
        logging.set_verbosity(level)
    return invented_tensors(info)


def load_causal_lm(model_path: str | Path, role: str = "checkpoint", **kwargs):
    """AutoModelForCausalLM.from_pretrained(model_path, **kwargs), refused with
    InventedWeightsError (naming the tensors) when transformers made any of them up."""
    from transformers import AutoModelForCausalLM  # lazy: transformers imports torch

    model, info = AutoModelForCausalLM.from_pretrained(
        str(model_path), output_loading_info=True, **kwargs
    )
    invented = invented_tensors(info)
    if invented:
        raise InventedWeightsError(str(model_path), invented, role)
    return model


def load_update(base, new_path: str | Path, **kwargs):
    """The new checkpoint of a weight update as the engine holds it once the update is loaded:
    vLLM's reload keeps its current value of a tensor the checkpoint lacks (measured on V1 0.32
    and V0 0.8.5, docs/measurements.md#update-missing-tensors), so each missing tensor takes
    its value in `base` (the model before the update) instead of a random one. A tensor of
    another shape is refused (InventedWeightsError).

    Returns:
        (model, kept): kept = the names that hold `base`'s values, sorted.
    """
    import torch  # lazy: torch takes seconds to import
    from transformers import AutoModelForCausalLM  # lazy: transformers imports torch

    model, info = AutoModelForCausalLM.from_pretrained(
        str(new_path), output_loading_info=True, **kwargs
    )
    mismatched = sorted(set(invented_tensors(info)) - set(info.get("missing_keys") or ()))
    if mismatched:
        raise InventedWeightsError(str(new_path), mismatched, "update checkpoint")
    kept = sorted(info.get("missing_keys") or ())
    if kept:
        old, new = base.state_dict(), model.state_dict()
        with torch.no_grad():
            for name in kept:
                new[name].copy_(old[name].to(new[name].dtype))
    return model, kept
