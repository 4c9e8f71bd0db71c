"""A dump's rows checked: the numeric canonical columns as floats with every problem named (NaN,
+inf or positive logprobs, bad entropies, ids, versions and ties), and the mask checked and
applied."""

from __future__ import annotations

from typing import Any

import numpy as np

from parity.data.dumpfiles import DumpError

# A logprob above this is no logprob (a probability, a ratio): bf16 log_softmax rounds a
# near-certain token to a few hundredths above 0 at most.
MAX_LOGPROB = 0.1


def _where(rows: dict[str, np.ndarray], i: int) -> str:
    where = f"row {int(rows['_row'][i])}"
    return where + (f", position {int(rows['_pos'][i])}" if rows["_pos"] is not None else "")


def _floats(rows, canon, name, path, problems) -> np.ndarray | None:
    values = rows[canon]
    try:
        if values.dtype == object:
            values = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        bad = next((i for i, v in enumerate(values) if not _is_number(v)), 0)
        wide = str(values[bad]).lstrip().startswith("[")
        problems.append(
            (
                path,
                name,
                f"{canon} must be numeric; {values[bad]!r} at "
                f"{_where(rows, bad)}"
                + (
                    " (a wide table, one list per row, needs .parquet, "
                    ".jsonl/.json or .pt, not .csv)"
                    if wide
                    else ""
                ),
            )
        )
        return None


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _count(
    rows, bad: np.ndarray, what: str, name: str, canon: str, path: str, fix: str, problems: list
) -> None:
    idx = np.flatnonzero(bad)
    if idx.size:
        problems.append(
            (path, name, f"{idx.size} {what} in {canon}, first at {_where(rows, idx[0])}: {fix}")
        )


# The numeric canonical columns, converted to floats in this order.
NUMERIC = (
    "engine_logprob",
    "trainer_logprob",
    "entropy",
    "trainer_log_kept_mass",
    "token_id",
    "position",
    "weight_version",
    "boundary_tie",
)


def validate(rows, mapping, path, parity_own, problems) -> dict[str, np.ndarray]:
    """The numeric canonical columns as floats, every problem named (NaN trainer logprobs of
    parity's own format are kept: they mark unscored rows, dropped per sequence later)."""
    vals = {
        canon: _floats(rows, canon, mapping.get(canon, canon), path, problems)
        for canon in NUMERIC
        if canon in rows
    }
    _check_logprobs(rows, vals, mapping, path, parity_own, problems)
    _check_entropy(rows, vals, mapping, path, parity_own, problems)
    _check_kept_mass(rows, vals, mapping, path, parity_own, problems)
    _check_integers(rows, vals, mapping, path, problems)
    if vals.get("boundary_tie") is not None:
        vals["boundary_tie"] = _ties(rows, vals["boundary_tie"], mapping, path, problems)
    _check_ids(rows, mapping, path, problems)
    return vals


def _check_logprobs(rows, vals, mapping, path, parity_own, problems) -> None:
    """Engine and trainer logprobs: no NaN (but a trainer's NaN in parity's own format: an
    unscored row), no +inf, none above MAX_LOGPROB."""
    for canon in ("engine_logprob", "trainer_logprob"):
        v = vals.get(canon)
        if v is None:
            continue
        name = mapping.get(canon)
        if canon == "engine_logprob" or not parity_own:
            _count(
                rows,
                np.isnan(v),
                "NaN value(s)",
                name,
                canon,
                path,
                "every scored token needs a logprob (-inf means probability 0); fill them "
                "or drop those rows (or mask them out)",
                problems,
            )
        _count(
            rows,
            np.isposinf(v),
            "+inf value(s)",
            name,
            canon,
            path,
            "a logprob is at most 0",
            problems,
        )
        _count(
            rows,
            v > MAX_LOGPROB,
            f"value(s) > {MAX_LOGPROB}",
            name,
            canon,
            path,
            "a logprob is at most 0: is this a probability or a ratio column?",
            problems,
        )


def _check_entropy(rows, vals, mapping, path, parity_own, problems) -> None:
    """Entropies finite and >= 0, on the scored rows (in parity's own format, those with a
    trainer logprob)."""
    trainer = vals.get("trainer_logprob")
    scored = ~np.isnan(trainer) if parity_own and trainer is not None else True
    e = vals.get("entropy")
    if e is None:
        return
    _count(
        rows,
        (~np.isfinite(e) | (e < -1e-6)) & scored,
        "NaN, infinite or negative value(s)",
        mapping.get("entropy"),
        "entropy",
        path,
        "an entropy is finite and >= 0; drop the "
        "column with --map entropy= if it is not the trainer's entropy",
        problems,
    )


def _check_kept_mass(rows, vals, mapping, path, parity_own, problems) -> None:
    """Log kept masses <= 0 (a mass is at most 1) and not -inf; NaN only in parity's own format
    (not scored, or scored from a scores file without it: that group is judged without it)."""
    k = vals.get("trainer_log_kept_mass")
    if k is None:
        return
    bad = (k > 1e-6) | np.isneginf(k) | (np.isnan(k) if not parity_own else False)
    _count(
        rows,
        bad,
        "NaN, -inf or positive value(s)",
        mapping.get("trainer_log_kept_mass"),
        "trainer_log_kept_mass",
        path,
        "a log kept mass is log of a probability mass in (0, 1], 0 where nothing is cut; "
        "drop the column with --map trainer_log_kept_mass= if it is something else",
        problems,
    )


def _check_integers(rows, vals, mapping, path, problems) -> None:
    """Token ids and positions integers >= 0; weight versions integers where known."""
    for canon in ("token_id", "position"):
        v = vals.get(canon)
        if v is not None:
            _count(
                rows,
                ~np.isfinite(v) | (v != np.round(v)) | (v < 0),
                "missing, negative or non-integer value(s)",
                mapping.get(canon, canon),
                canon,
                path,
                "expected integers >= 0",
                problems,
            )
    w = vals.get("weight_version")
    if w is not None:
        _count(
            rows,
            np.isinf(w) | (np.isfinite(w) & (w != np.round(w))),
            "non-integer value(s)",
            mapping.get("weight_version"),
            "weight_version",
            path,
            "expected integer versions (empty = unknown)",
            problems,
        )


def _ties(rows, t: np.ndarray, mapping, path, problems) -> np.ndarray:
    """Boundary ties 0, 1 or unknown (NaN); returned as booleans (unknown: False)."""
    _count(
        rows,
        ~(np.isnan(t) | np.isin(t, (0, 1))),
        "value(s) other than 0/1",
        mapping.get("boundary_tie"),
        "boundary_tie",
        path,
        "true/false (empty = unknown)",
        problems,
    )
    return t == 1


def _check_ids(rows, mapping, path, problems) -> None:
    """Every token has a sequence id and a prompt id, where the table has those columns."""
    for canon in ("sequence_id", "prompt_id"):
        if canon in rows:
            _count(
                rows,
                _missing(rows[canon]),
                "missing value(s)",
                mapping.get(canon, canon),
                canon,
                path,
                "every token needs one",
                problems,
            )


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v is None or (isinstance(v, float) and v != v) for v in values], bool)
    return np.isnan(values) if values.dtype.kind == "f" else np.zeros(values.size, bool)


def apply_mask(rows: dict[str, Any], name: str, path: str) -> dict[str, Any]:
    problems: list = []
    m = _floats(rows, "mask", name, path, problems)
    if m is not None:
        _count(
            rows,
            ~np.isin(m, (0, 1)),
            "value(s) other than 0/1",
            name,
            "mask",
            path,
            "1 = a scored token, 0 = padding or prompt",
            problems,
        )
    if problems:
        raise DumpError(problems)
    keep = m != 0
    if not keep.any():
        raise DumpError(
            [(path, name, "every token is masked out (no 1 in the mask): nothing to judge")]
        )
    return {k: (v[keep] if v is not None else None) for k, v in rows.items()}
