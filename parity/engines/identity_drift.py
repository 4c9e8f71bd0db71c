"""Config drift: each model-identity key an engine environment's own transformers reads from a
checkpoint differently from the trainer, found before any engine starts, with its cause and fix
(what config.json has, what failed to load)."""

from __future__ import annotations

import json
from typing import Any

from parity.engines.identity import compare

# Facts derived from others (the stop ids from the eos ids, which drift judges one by one) or
# that only the live engine applies (its generation-config request defaults): judged engine
# against trainer after the run (parity.run.modelcheck.add_identity), not here.
NOT_DRIFT = frozenset({"model.stop_token_ids", "model.sampling_defaults"})


def drift(
    trainer: dict[str, Any], engine_env: dict[str, Any], env_name: str, transformers_version: str
) -> list[dict[str, Any]]:
    """Each identity key the engine's environment reads differently from the trainer (config
    drift between transformers versions), found before any engine starts.

    Args:
        trainer: `trainer_facts` of the checkpoint.
        engine_env: the same checkpoint's facts read in the engine's environment
            (parity.engines.engine_checks.read_model_facts).
        env_name: the environment's name (e.g. "v0"); the column of its values.
        transformers_version: that environment's transformers version.
    Returns:
        [{"key", "trainer": value, env_name: value, "status": "differs" | "unreadable",
          "cause", "fix", "message"}]: "unreadable" when the env reads nothing where the trainer
        reads a value; message is the one line "cause: fix". Keys the trainer cannot read are
        not judged, nor NOT_DRIFT.
    """
    evidence = trainer.get("config_json") or engine_env.get("config_json") or {}
    errors = engine_env.get("errors") or {}
    rows = []
    for row in compare(trainer, engine_env, ("trainer", env_name)):
        t, e = row["trainer"], row[env_name]
        if t is None or row["status"] == "same" or row["key"] in NOT_DRIFT:
            continue
        cause, fix = _explain(row["key"], t, e, transformers_version, env_name, evidence, errors)
        rows.append(
            {
                **row,
                "status": "unreadable" if e is None else "differs",
                "cause": cause,
                "fix": fix,
                "message": f"{cause}: {fix}",
            }
        )
    return rows


def _explain(
    key: str, t: Any, e: Any, version: str, env_name: str, evidence: dict, errors: dict
) -> tuple[str, str]:
    """(cause, fix) of one drifted key, from what config.json has and what failed to load."""
    reader = f"transformers {version} in env {env_name}"
    fields = set(evidence.get("fields") or ())
    short = key.split(".", 1)[1]
    only_new = "config.json has only {} (transformers >= 5); "
    if key == "model.rope_theta":
        cause = (
            only_new.format("rope_parameters")
            if "rope_theta" not in fields and "rope_parameters" in fields
            else ""
        )
        return (
            f"{cause}{reader} reads rope_theta={e} instead of {t}",
            f'add "rope_theta": {t} to config.json (parity\'s model builders write both)',
        )
    if key == "model.rope_scaling":
        cause = only_new.format("rope_parameters") if "rope_scaling" not in fields else ""
        return (
            f"{cause}{reader} reads RoPE scaling {json.dumps(e)} instead of {json.dumps(t)}",
            f'add "rope_scaling": {json.dumps(t)} to config.json',
        )
    if key == "model.dtype":
        cause = (
            only_new.format("dtype") if "torch_dtype" not in fields and "dtype" in fields else ""
        )
        if e is None:
            return (
                f"{cause}{reader} reads no torch_dtype, so vLLM's dtype=auto falls back to "
                'float16 there (V0 0.8.5 on CPU then fails: "reshape_and_cache_cpu_impl '
                "not implemented for 'Half'\")",
                f'add "torch_dtype": "{t}" to config.json (or set the engine\'s dtype)',
            )
        return f"{cause}{reader} reads dtype {e} instead of {t}", f'set "torch_dtype": "{t}"'
    if key == "model.tokenizer_eos_token_id" and e is None:
        tok_class = evidence.get("tokenizer_class")
        why = errors.get("tokenizer", "no eos token")
        if tok_class == "TokenizersBackend":
            return (
                f'tokenizer_config.json has tokenizer_class "TokenizersBackend" '
                f"(transformers >= 5); {reader} cannot load the tokenizer ({why})",
                'set "tokenizer_class": "PreTrainedTokenizerFast" in tokenizer_config.json',
            )
        return (
            f"{reader} cannot read the tokenizer's eos token ({why})",
            "write tokenizer files both transformers versions load",
        )
    if key == "model.generation_eos_token_id" and e is None:
        return (
            f"{reader} cannot read generation_config.json "
            f"({errors.get('generation_config', 'no eos_token_id')})",
            "write generation_config.json with eos_token_id only",
        )
    return (
        f"{reader} reads {short}={json.dumps(e)} instead of {json.dumps(t)}",
        f"write {short} in config.json under the name transformers {version} reads "
        "(both spellings where transformers versions differ)",
    )
