"""What a scores file holds and how the columns read from one are checked: the score columns
(SCORE_COLUMNS) and the optional sampling and head columns (CONTEXT_COLUMNS), long or wide rows,
every problem with its fix, into ScoresData (each sequence's scores in position order)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parity.data import tables

# Columns of a scores file: the processed logprob is required; the others are optional (a
# category that needs one refuses a file without it when the scenario is parsed).
SCORE_COLUMNS = ("trainer_logprob", "trainer_raw_logprob", "entropy", "boundary_tie")
# Optional columns saying which sampling and head a row was scored with: when present, only the
# rows matching the scenario's sampling and head dtype are used.
CONTEXT_COLUMNS = ("temperature", "top_p", "top_k", "head_dtype")


@dataclass
class ScoresData:
    """A validated scores file: per (sequence_key, *context values), each score column's values
    in position order."""

    path: Path
    columns: frozenset[str]
    context: tuple[str, ...]
    groups: dict[tuple, dict[str, np.ndarray]] = field(default_factory=dict)

    def contexts(self) -> set[tuple]:
        return {k[1:] for k in self.groups}


def _numbers(name: str, values: list, problems: list[str], integer: bool = False) -> np.ndarray:
    bad = sum(
        1
        for v in values
        if v is not None
        and (isinstance(v, bool) or not isinstance(v, int if integer else (int, float)))
    )
    if bad:
        kind = "integers" if integer else "numbers"
        problems.append(f"column {name}: {bad} value(s) are not {kind}")
        return np.full(len(values), np.nan)
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _widen(cols: dict[str, list], problems: list[str]) -> dict[str, list]:
    """Wide rows (one per sequence, list columns) as long rows with positions."""
    listed = [c for c in SCORE_COLUMNS if c in cols]
    out: dict[str, list] = {
        k: []
        for k in ["sequence_key", "position", *listed, *[c for c in CONTEXT_COLUMNS if c in cols]]
    }
    uneven = 0
    for i, key in enumerate(cols["sequence_key"]):
        values = [cols[c][i] for c in listed]
        if any(not isinstance(v, list) for v in values) or len({len(v) for v in values}) > 1:
            uneven += 1
            continue
        for pos in range(len(values[0])):
            out["sequence_key"].append(key)
            out["position"].append(pos)
            for c, v in zip(listed, values):
                out[c].append(v[pos])
            for c in CONTEXT_COLUMNS:
                if c in cols:
                    out[c].append(cols[c][i])
    if uneven:
        problems.append(
            f"{uneven} wide row(s) whose score columns are not lists of one "
            "length (one value per completion token)"
        )
    return out


def validate(path: Path, cols: dict[str, list]) -> tuple[ScoresData | None, list[str]]:
    problems: list[str] = []
    for need in ("sequence_key", "trainer_logprob"):
        if need not in cols:
            problems.append(
                f"no {need} column (columns: {', '.join(cols) or 'none'}); a scores "
                "file has sequence_key, position, trainer_logprob and optionally "
                'trainer_raw_logprob, entropy (docs/trainer.md, "Trainer logprobs computed elsewhere")'
            )
    if problems:
        return None, problems
    if any(isinstance(v, list) for v in cols["trainer_logprob"]):
        cols = _widen(cols, problems)
    elif "position" not in cols:
        problems.append(
            "no position column: long rows need the 0-based position of the token "
            "in the completion (or write one wide row per sequence, list columns)"
        )
        return None, problems
    n = len(cols["sequence_key"])
    if n == 0:
        return None, problems + ["holds no scores (no rows)"]
    keys = cols["sequence_key"]
    bad = sum(1 for k in keys if not (isinstance(k, str) and len(k) == 64))
    if bad:
        problems.append(
            f"{bad} sequence_key value(s) are not 64-character sha256 hex strings "
            "(parity.trainer.external.sequence_key)"
        )
    pos = _numbers("position", cols["position"], problems, integer=True)
    if np.isnan(pos).any() or (pos < 0).any():
        problems.append("column position: missing or negative values (0-based positions)")
    values = {c: _numbers(c, cols[c], problems) for c in SCORE_COLUMNS[:3] if c in cols}
    for c, v in values.items():
        nan, pinf = int(np.isnan(v).sum()), int((v == np.inf).sum())
        if nan:
            problems.append(
                f"column {c}: {nan} NaN or missing value(s); every scored token "
                "needs a number (-inf: a token the processed distribution excludes)"
            )
        if pinf:
            problems.append(f"column {c}: {pinf} value(s) are +inf")
    if "entropy" in values and (values["entropy"] < -1e-6).any():
        problems.append("column entropy: negative values (nats, >= 0)")
    if "boundary_tie" in cols:
        if any(not isinstance(v, bool) for v in cols["boundary_tie"]):
            problems.append("column boundary_tie: values must be true or false")
        values["boundary_tie"] = np.asarray([v is True for v in cols["boundary_tie"]])
    context = tuple(c for c in CONTEXT_COLUMNS if c in cols)
    for c in context:
        if any(tables.is_nan(v) for v in cols[c]):
            problems.append(f"column {c}: missing values (give it on every row, or drop it)")
    if problems:
        return None, problems
    group_of: dict[tuple, int] = {}
    gids = np.asarray(
        [
            group_of.setdefault((k, *(cols[c][i] for c in context)), len(group_of))
            for i, k in enumerate(keys)
        ]
    )
    order = np.lexsort((pos, gids))
    g, p = gids[order], pos[order].astype(np.int64)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    expected = np.arange(len(g)) - np.repeat(starts, ends - starts)
    wrong = np.unique(g[p != expected])
    if wrong.size:
        names = [k for k, i in group_of.items() if i == wrong[0]]
        return None, [
            f"{wrong.size} sequence(s) whose positions are not 0, 1, ..., T-1 exactly "
            f"once (duplicates or gaps), e.g. sequence_key {names[0][0]}"
            + (
                " (rows for another sampling or head dtype need the columns "
                f"{', '.join(CONTEXT_COLUMNS)})"
                if not context
                else ""
            )
        ]
    keys_by_gid = {i: k for k, i in group_of.items()}
    data = ScoresData(path, frozenset(values), context)
    for s, e in zip(starts, ends):
        rows = order[s:e]
        data.groups[keys_by_gid[int(g[s])]] = {c: v[rows] for c, v in values.items()}
    return data, []
