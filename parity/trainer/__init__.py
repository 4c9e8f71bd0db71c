"""The trainer side: scoring sampled tokens the way an RL trainer does (HF transformers reference,
output heads, the sampler's transform), split scoring across a weight update, hybrid
hypotheses, and trainer logprobs computed outside parity.

This module is the scorer registry: scorer name (a scenario's `[reference] scorer`) -> the
factory of a parity.trainer.base.Scorer, imported lazily ("module:attribute"); another installed
package adds one through the `parity.scorers` entry-point group (parity.plugins)."""

from __future__ import annotations

import importlib

from parity import plugins

DEFAULT = "hf"
SCORERS: dict[str, str] = {
    # HF transformers, teacher-forced, on the device the trainer would use.
    "hf": "parity.trainer.reference:Reference",
}


def names() -> dict[str, str]:
    """Scorer name -> "module:attribute": the built-ins, then the plugins'."""
    return plugins.targets(plugins.SCORERS, SCORERS)


def new_scorer(model_path: str, head_dtype: str, scorer: str = DEFAULT, **kwargs):
    """A scorer of a checkpoint (kwargs: model_fp, cache, tie_rule, device; see
    parity.trainer.base.Scorer). KeyError naming the known scorers for an unknown name."""
    known = names()
    if scorer not in known:
        raise KeyError(f"unknown scorer {scorer!r}; known: {', '.join(known)}")
    module, _, attr = known[scorer].partition(":")
    return getattr(importlib.import_module(module), attr)(model_path, head_dtype, **kwargs)
