"""The fields of a scenario file: the names and defaults every scenario shares, the command-line
overrides, and the checkers of one field or table (each adds its problems to a list it is given)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from parity.engines.base import SamplingSpec
from parity.setup import inputs
from parity.setup.models import MODEL_NAMES, is_built_name
from parity.verdicts import frameworks

Problem = tuple[str, str, str]

SAMPLING_FIELDS = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "max_tokens": int,
    "seed": int,
    "n": int,
    "logprobs": int,
}
# Fields every scenario may have; a category adds its own (Category.fields).
TOP_LEVEL = {
    "name",
    "category",
    "description",
    "model",
    "expect",
    "expect_diagnosis",
    "report_within",
    "reward",
    "prompts",
    "sampling",
    "candidate",
    "baseline",
    "reference",
    "tolerances",
    "clip",
    "min_tokens",
    "margins",
    "gates",
}
EXPECTS = ("pass", "fail", "report")
# Diagnoses the runner gives in every category: an engine that does not run the trainer's model,
# and an engine environment that would read the checkpoint differently (found before start).
GENERIC_DIAGNOSES = ("model_mismatch", "config_drift")
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_MIN_TOKENS = 200  # fewer sampled tokens than this: the verdict is inconclusive
# vLLM refuses more than this many logprobs per position (max_logprobs default,
# docs/measurements.md#max-logprobs).
MAX_LOGPROBS = 20


@dataclass
class Overrides:
    """Command-line overrides; None means "not given" so the file's value stands."""

    model: str | None = None
    candidate: str | None = None
    baseline: str | None = None
    reference_device: str | None = None
    trainer: str | None = None  # a --trainer preset (parity.trainer.semantics.PRESETS)


def sampling_problems(sampling: SamplingSpec, fld: str, path: str) -> list[Problem]:
    """Range problems of a sampling spec (checked before any engine sees it)."""

    out = []
    if not (math.isfinite(sampling.temperature) and 0 <= sampling.temperature <= 100):
        out.append((path, f"{fld}.temperature", "must be a finite number in [0, 100]"))
    if not 0 < sampling.top_p <= 1:
        out.append((path, f"{fld}.top_p", "must be in (0, 1]"))
    if sampling.top_k < 0:
        out.append((path, f"{fld}.top_k", "must be >= 0 (0 = off)"))
    if not 1 <= sampling.max_tokens <= 1 << 20:
        out.append((path, f"{fld}.max_tokens", "must be in [1, 1048576]"))
    if not 1 <= sampling.n <= 1024:
        out.append((path, f"{fld}.n", "must be in [1, 1024]"))
    if not 0 <= sampling.logprobs <= MAX_LOGPROBS:
        out.append((path, f"{fld}.logprobs", f"must be in [0, {MAX_LOGPROBS}] (vLLM's limit)"))
    if sampling.seed is not None and not 0 <= sampling.seed < 1 << 63:
        out.append((path, f"{fld}.seed", "must be in [0, 2^63)"))
    return out


def check_type(problems, path, fld, value, typ) -> bool:
    ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        problems.append(
            (path, fld, f"expected {typ.__name__}, got {type(value).__name__} {value!r}")
        )
    return ok


def table(data: dict, key: str, path: str, problems: list) -> dict:
    """data[key] as a table ({} when absent); a problem when it is something else."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.append(
            (
                path,
                key,
                f"must be a table ([{key}] or {key} = {{ ... }}), got {type(value).__name__}",
            )
        )
        return {}
    return value


def string(data: dict, key: str, path: str, problems: list, default=None):
    """data[key] as a string (default when absent); a problem when it is something else."""
    value = data.get(key, default)
    if value is not None and not isinstance(value, str):
        problems.append((path, key, f"must be a string, got {type(value).__name__} {value!r}"))
        return default
    return value


def sampling_table(raw: Any, fld: str, path: str, problems: list) -> dict[str, Any]:
    """Validated sampling fields (typed), each problem recorded."""
    if not isinstance(raw, dict):
        problems.append((path, fld, "must be a table of sampling fields"))
        return {}
    kwargs = {}
    for key, value in raw.items():
        if key not in SAMPLING_FIELDS:
            problems.append(
                (path, f"{fld}.{key}", "unknown field; allowed: " + ", ".join(SAMPLING_FIELDS))
            )
        elif check_type(problems, path, f"{fld}.{key}", value, SAMPLING_FIELDS[key]):
            kwargs[key] = SAMPLING_FIELDS[key](value)
    return kwargs


def limits(
    data: dict,
    key: str,
    defaults: dict[str, float],
    path: str,
    problems: list,
) -> dict[str, float]:
    """Tolerances or margins: the category's defaults with the file's values over them."""
    out = dict(defaults)
    for name, value in table(data, key, path, problems).items():
        if name not in out:
            problems.append(
                (
                    path,
                    f"{key}.{name}",
                    f"unknown {key[:-1]} for this category; known: {', '.join(out) or 'none'}",
                )
            )
        elif check_type(problems, path, f"{key}.{name}", value, float):
            if not (value >= 0 and value != float("inf")):
                problems.append((path, f"{key}.{name}", "must be a finite number >= 0"))
            else:
                out[name] = float(value)
    return out


def model_problems(model: Any, source: str, path: str) -> list[Problem]:
    """The model must name a checkpoint (checked without building anything); a bad --model or
    $PARITY_MODEL is blamed on the option, not the file."""

    message = inputs.model_problem(model, MODEL_NAMES, is_built_name)
    if message is None:
        return []
    where = {"cli": "--model"}.get(source, "$" + source[4:] if source.startswith("env:") else path)
    return [(where, "model", message)]


def gates(data: dict, path: str, problems: list[Problem]) -> list[str]:
    """`gates = ["nemo-rl", ...]`: the trainer frameworks whose documented health gates are
    findings of this scenario (parity.verdicts.frameworks; docs/frameworks.md)."""
    value = data.get("gates", [])
    known = ", ".join(frameworks.GATEABLE)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append((path, "gates", f'expected a list of names, e.g. ["nemo-rl"]; use {known}'))
        return []
    bad = frameworks.check_names(value)
    problems += [(path, "gates", f"{n!r} is not a framework with gates; use {known}") for n in bad]
    return [] if bad else list(value)
