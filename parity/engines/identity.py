"""The one model-identity rule: which config facts make two loads "the same model" (MODEL_KEYS),
how two values compare (`same`), and those facts as the trainer, an engine and its env read them.
Standard library only at import (transformers lazily): the V0 worker loads it without parity."""

from __future__ import annotations

import json
import math
import os
from typing import Any

# The identity keys, by the names of the engines' effective-config "key" dict where it has them.
MODEL_KEYS = (
    "model.architectures",
    "model.dtype",  # the checkpoint's dtype; an engine reports its resolved dtype as "dtype"
    "model.rope_theta",
    "model.rope_scaling",  # rope parameters other than the base; {"rope_type": "default"} if none
    "model.max_position_embeddings",
    "model.vocab_size",
    "model.tie_word_embeddings",
    "model.eos_token_id",  # config.json
    "model.generation_eos_token_id",  # generation_config.json
    "model.tokenizer_eos_token_id",  # the tokenizer
    # Where generation ends: an engine ends at its tokenizer's eos and at every eos id of the
    # model's generation config (vLLM's SamplingParams.update_from_generation_config, V0 and
    # V1 alike); the trainer at config.json's eos and its tokenizer's (stop_ids_of).
    "model.stop_token_ids",
    # The sampling a request that omits temperature/top_p/top_k/min_p/penalties gets: the
    # model's generation config, as the engine applies it (get_diff_sampling_param) and as
    # transformers reads it for the trainer (sampling_defaults_of). {} = none.
    "model.sampling_defaults",
    "model.bos_token_id",
    "model.norm_eps",  # rms_norm_eps or layer_norm_eps, whichever the config has
    "model.num_hidden_layers",
    "model.hidden_size",
)
ID_KEYS = frozenset(
    {
        "model.eos_token_id",
        "model.generation_eos_token_id",
        "model.tokenizer_eos_token_id",
        "model.stop_token_ids",
        "model.bos_token_id",
    }
)
# The generation-config fields that are request defaults (vLLM's get_diff_sampling_param,
# whose max_new_tokens it renames max_tokens: a length limit, not a distribution).
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)
# Config attributes read under their own name on every transformers version.
_PLAIN_FIELDS = (
    "architectures",
    "max_position_embeddings",
    "vocab_size",
    "tie_word_embeddings",
    "eos_token_id",
    "bos_token_id",
    "num_hidden_layers",
    "hidden_size",
)
_NORM_EPS_FIELDS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")
_DTYPES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
}
# config.json fields whose spelling differs between transformers 4.x and 5 (drift's evidence).
_DRIFT_FIELDS = ("rope_theta", "rope_parameters", "rope_scaling", "torch_dtype", "dtype")


# ----------------------------------------------------------------------------- the rule


def same(a: Any, b: Any, key: str | None = None) -> bool:
    """The model-identity equality, used engine vs engine and engine vs trainer.

    - a one-element list is its element: [2] == 2;
    - numbers are equal within rtol 1e-9 (10000 == 10000.0); a bool is never a number;
    - dtype spellings are one: "torch.bfloat16" == "bfloat16" == "bf16";
    - token ids compare as sets: [2, 3] == [3, 2], but [2, 3] != 2. This applies to lists of
      ints at the top level (key None) or under a key naming token ids; elsewhere inside a dict
      (e.g. rope_scaling's mrope_section) lists keep their order;
    - dicts compare field by field by this rule, a missing field reading as None.
    """
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return False
        return all(same(a.get(k), b.get(k), k) for k in set(a) | set(b))
    if key is None or "token_id" in key:
        ids_a, ids_b = _id_set(a), _id_set(b)
        if ids_a is not None and ids_b is not None:
            return ids_a == ids_b
    a, b = _unwrap(a), _unwrap(b)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))) or len(a) != len(b):
            return False
        return all(same(x, y, "") for x, y in zip(a, b))
    if _is_number(a) and _is_number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, str) and isinstance(b, str):
        return _norm_str(a) == _norm_str(b)
    return a == b


def _unwrap(v: Any) -> Any:
    return v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v


def _is_number(v: Any, kinds: tuple = (int, float)) -> bool:
    return isinstance(v, kinds) and not isinstance(v, bool)


def _id_set(v: Any) -> frozenset | None:
    """The token ids in `v` (an int or a list of ints) as a set; None for anything else."""
    v = [v] if _is_number(v, (int,)) else v
    if isinstance(v, (list, tuple, set, frozenset)) and v and all(_is_number(x, (int,)) for x in v):
        return frozenset(v)
    return None


def _norm_str(s: str) -> str:
    plain = s.strip().removeprefix("torch.")
    return _DTYPES.get(plain.lower(), plain)


# ----------------------------------------------------------------------------- normalisation


def normalize_dtype(v: Any) -> str | None:
    """ "torch.bfloat16", torch.bfloat16, "bf16" -> "bfloat16" (float32, float16 likewise)."""
    return None if v is None else _norm_str(str(v))


def normalize_ids(v: Any) -> Any:
    """Token id(s) as one int, or a sorted list of distinct ints when there are several."""
    ids = _id_set(v)
    return v if ids is None else sorted(ids)[0] if len(ids) == 1 else sorted(ids)


def normalize_rope_scaling(v: Any) -> Any:
    """RoPE parameters other than the base, spelled one way for transformers 4.x (rope_scaling,
    None for plain RoPE, sometimes "type") and 5 (rope_parameters, which also holds rope_theta).
    Plain RoPE is {"rope_type": "default"}. Per-layer-type dicts are normalised per entry."""
    if v is None:
        return {"rope_type": "default"}
    if not isinstance(v, dict):
        return v
    if v and all(isinstance(x, dict) for x in v.values()):
        return {k: normalize_rope_scaling(x) for k, x in v.items()}
    out = {k: x for k, x in v.items() if k not in ("rope_theta", "type")}
    out.setdefault("rope_type", v.get("type", "default"))
    return out


def normalize(key: str, value: Any) -> Any:
    """One identity value in the form facts are stored in (JSON data, one spelling); a
    rope_scaling read as None is plain RoPE (transformers 4.x), any other None stays None."""
    if key == "model.rope_scaling":
        return normalize_rope_scaling(value)
    if value is None:
        return None
    if key == "model.dtype":
        return normalize_dtype(value)
    if key in ID_KEYS:
        return normalize_ids(value)
    if key == "model.architectures":
        return [value] if isinstance(value, str) else list(value)
    return value


def stop_ids_of(*eos: Any) -> Any:
    """The token ids where generation ends, from each source's eos id(s) (an int, a list, or
    None where that source has none): their union, normalised; None when no source has one."""
    ids: set[int] = set()
    for value in eos:
        found = _id_set(value)
        if found:
            ids |= found
    return normalize_ids(sorted(ids)) if ids else None


def sampling_defaults_of(generation_config: Any) -> dict[str, Any] | None:
    """The request defaults (SAMPLING_FIELDS) a generation config sets, by name ({} when it
    sets none); None when it was not read (a string: an engine's "<unavailable: ...>")."""
    if not isinstance(generation_config, dict):
        return None
    return {
        k: generation_config[k] for k in SAMPLING_FIELDS if generation_config.get(k) is not None
    }


def rope_theta_of(cfg: Any) -> Any:
    """The RoPE base a config gives the model, read as its own transformers version does:
    transformers >= 5 configs (they have standardize_rope_params) keep it in rope_parameters,
    possibly per layer type; older ones in rope_theta (a rope_parameters entry in config.json is
    an unknown extra there, which is how 4.51 silently falls back to its default 10000)."""
    rope = getattr(cfg, "rope_parameters", None)
    if hasattr(cfg, "standardize_rope_params") and isinstance(rope, dict):
        if "rope_theta" in rope:
            return rope["rope_theta"]
        thetas = {x.get("rope_theta") for x in rope.values() if isinstance(x, dict)}
        if len(thetas) == 1:
            return thetas.pop()
    return getattr(cfg, "rope_theta", None)


def config_facts(
    cfg: Any, generation_eos: Any = None, tokenizer_eos: Any = None, transformers_major: int = 5
) -> dict[str, Any]:
    """Identity facts from loaded transformers objects (duck-typed: no import here).

    Args:
        cfg: a PretrainedConfig (None: every config fact is None).
        generation_eos: GenerationConfig.eos_token_id (None when there is none).
        tokenizer_eos: the tokenizer's eos_token_id.
        transformers_major: the major version that loaded `cfg`: 5 reads the dtype from
            `dtype`, 4 from `torch_dtype` (which is what vLLM 0.8.5 reads).
    """
    facts: dict[str, Any] = dict.fromkeys(MODEL_KEYS)
    facts["model.generation_eos_token_id"] = normalize_ids(generation_eos)
    facts["model.tokenizer_eos_token_id"] = normalize_ids(tokenizer_eos)
    if cfg is None:
        return facts
    if transformers_major >= 5:
        dtype, scaling = getattr(cfg, "dtype", None), getattr(cfg, "rope_parameters", None)
    else:
        dtype, scaling = getattr(cfg, "torch_dtype", None), getattr(cfg, "rope_scaling", None)
    eps = next(
        (getattr(cfg, f) for f in _NORM_EPS_FIELDS if getattr(cfg, f, None) is not None), None
    )
    for name in _PLAIN_FIELDS:
        facts[f"model.{name}"] = getattr(cfg, name, None)
    facts.update(
        {
            "model.dtype": dtype,
            "model.rope_theta": rope_theta_of(cfg),
            "model.rope_scaling": scaling,
            "model.norm_eps": eps,
        }
    )
    return {k: normalize(k, v) for k, v in facts.items()}


# ----------------------------------------------------------------------------- the readers


def read_facts(model_path: str | os.PathLike) -> dict[str, Any]:
    """The identity facts of a checkpoint directory as THIS interpreter's transformers reads it
    (AutoConfig, GenerationConfig when generation_config.json exists, AutoTokenizer).

    Returns:
        MODEL_KEYS -> value (None where it could not be read), plus "transformers_version",
        "errors" ({"config" | "generation_config" | "tokenizer": message}) and "config_json"
        (which of the fields transformers 4 and 5 spell apart config.json has, and the
        tokenizer_class of tokenizer_config.json): the evidence `drift` explains from.
    """
    import transformers  # lazy: transformers imports torch
    from transformers import (  # lazy: transformers imports torch
        AutoConfig,
        AutoTokenizer,
        GenerationConfig,
    )

    path = str(model_path)
    errors: dict[str, str] = {}
    cfg = gen_eos = tok_eos = None
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as exc:  # recorded: the facts it carries read as None
        errors["config"] = _error(exc)
    if os.path.exists(os.path.join(path, "generation_config.json")):
        try:
            gen_eos = GenerationConfig.from_pretrained(path).eos_token_id
        except Exception as exc:
            errors["generation_config"] = _error(exc)
    try:
        tok_eos = AutoTokenizer.from_pretrained(path).eos_token_id
    except Exception as exc:
        errors["tokenizer"] = _error(exc)
    major = int(transformers.__version__.split(".")[0])
    facts = config_facts(cfg, gen_eos, tok_eos, major)
    facts["model.stop_token_ids"] = (
        stop_ids_of(facts["model.eos_token_id"], tok_eos) if tok_eos is not None else None
    )
    facts["model.sampling_defaults"] = _sampling_defaults(path, cfg, GenerationConfig, errors)
    facts.update(
        transformers_version=transformers.__version__, errors=errors, config_json=_config_json(path)
    )
    return facts


def trainer_facts(model_path: str | os.PathLike) -> dict[str, Any]:
    """The identity facts as the trainer-side reference reads them: the harness's own
    transformers (5), as parity.trainer.reference loads the model. Same shape as `read_facts`."""
    return read_facts(model_path)


def engine_facts(effective_config_key: dict[str, Any]) -> dict[str, Any]:
    """An engine's effective-config "key" dict (or the whole effective config) by MODEL_KEYS.

    "model.dtype" is the engine's resolved "dtype" unless the key has "model.dtype" itself. A key
    the engine did not report is None (unknown); a reported rope_scaling of None is plain RoPE.
    """
    key = effective_config_key
    if isinstance(key.get("key"), dict):  # the whole effective config was passed
        key = key["key"]
    if "model.dtype" not in key and "dtype" in key:
        key = {**key, "model.dtype": key["dtype"]}
    key = {**_engine_generation_facts(key), **key}
    return {k: normalize(k, key[k]) if k in key else None for k in MODEL_KEYS}


def _engine_generation_facts(key: dict[str, Any]) -> dict[str, Any]:
    """The stop ids and request defaults an engine applies, from the facts it reports: its
    tokenizer's eos with its generation config's eos ids (unknown without the tokenizer's),
    and its generation_config_defaults restricted to SAMPLING_FIELDS."""
    out: dict[str, Any] = {}
    tok_eos = key.get("model.tokenizer_eos_token_id")
    if tok_eos is not None:
        out["model.stop_token_ids"] = stop_ids_of(tok_eos, key.get("model.generation_eos_token_id"))
    if "generation_config_defaults" in key:
        out["model.sampling_defaults"] = sampling_defaults_of(key["generation_config_defaults"])
    return out


def _sampling_defaults(path: str, cfg: Any, generation_config: Any, errors: dict) -> Any:
    """The request defaults of the model's generation config as the engine derives them
    (vLLM's try_get_generation_config): generation_config.json's non-default values, or those
    of a generation config made from config.json when there is no such file."""
    try:
        if os.path.exists(os.path.join(path, "generation_config.json")):
            gen = generation_config.from_pretrained(path)
        elif cfg is not None:
            gen = generation_config.from_model_config(cfg)
        else:
            return None
        return sampling_defaults_of(gen.to_diff_dict())
    except Exception as exc:  # recorded: the fact reads as unknown
        errors.setdefault("generation_config", _error(exc))
        return None


def _error(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def _config_json(path: str) -> dict[str, Any]:
    def load(name: str) -> dict:
        try:
            with open(os.path.join(path, name)) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    cfg, tok = load("config.json"), load("tokenizer_config.json")
    return {
        "fields": [k for k in _DRIFT_FIELDS if k in cfg],
        "tokenizer_class": tok.get("tokenizer_class"),
    }


# ----------------------------------------------------------------------------- comparisons


def compare(
    a: dict[str, Any],
    b: dict[str, Any],
    names: tuple[str, str] = ("a", "b"),
) -> list[dict[str, Any]]:
    """One row per identity key present on either side, in MODEL_KEYS order:
    {"key", names[0]: value, names[1]: value, "status": "same" | "differs" | "unknown"};
    unknown when either side could not read the value (None or missing). Callers make "differs"
    a failing finding and "unknown" an inconclusive one."""
    if len(set(names)) != 2 or {"key", "status"} & set(names):
        raise ValueError(f"names must be two distinct labels other than key/status: {names!r}")
    rows = []
    for k in MODEL_KEYS:
        if k not in a and k not in b:
            continue
        va, vb = a.get(k), b.get(k)
        status = "unknown" if va is None or vb is None else "same" if same(va, vb, k) else "differs"
        rows.append({"key": k, names[0]: va, names[1]: vb, "status": status})
    return rows
