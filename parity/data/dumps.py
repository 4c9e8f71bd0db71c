"""A per-token table made elsewhere (a trainer's rollout dump, parity's own tokens.parquet) loaded
for `parity judge`: read, mapped (dumpcolumns.py), checked (dumpcheck.py), and split into groups
(scenario, engine) and sequences ordered by position."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.data.dumpcheck import apply_mask, validate
from parity.data.dumpcolumns import PRESETS, resolve
from parity.data.dumpfiles import DumpError, read_columns, sha256, token_rows

# parity's own tokens.parquet: rows whose trainer_logprob is NaN were not scored (weight-update
# probes) and are dropped with a count; in any other file NaN is an error.
PARITY_MARKERS = ("scenario", "engine", "trainer_raw_logprob")
GROUP_BY = ("scenario", "engine")  # judged separately when both columns exist
LABELS = ("scenario", "engine", "engine_label")
# per-token, Group fields in order
OPTIONAL = ("entropy", "weight_version", "boundary_tie", "trainer_log_kept_mass")


@dataclass
class Group:
    """The sequences of one judged group (the whole file, or one (scenario, engine) of
    parity's own format). Per sequence, aligned arrays; the optional ones None if absent."""

    name: str
    labels: dict[str, Any]
    sequence_ids: list[Any]
    engine: list[np.ndarray]
    trainer: list[np.ndarray]
    entropy: list[np.ndarray] | None = None
    weight_version: list[np.ndarray] | None = None  # float, NaN = no version
    boundary_tie: list[np.ndarray] | None = None  # bool
    trainer_log_kept_mass: list[np.ndarray] | None = None  # NaN: not known for that token
    prompt_ids: np.ndarray | None = None
    dropped_unscored: int = 0


@dataclass
class Dump:
    path: Path
    sha256: str
    format: str
    mapping: dict[str, str]  # canonical -> the file's column
    layout: str  # "long" or "wide"
    n_rows: int
    groups: list[Group]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------- loading


def load(path: Path, fmt: str | None = None, overrides: dict[str, str] | None = None) -> Dump:
    """Read, map and validate a per-token table and split it into sequences.

    Args:
        path: .parquet, .csv, .jsonl/.json or .pt (a torch.save'd dict of tensors).
        fmt: a PRESETS name (default "parity": the canonical names).
        overrides: {canonical: the file's column} from --map ("" = no such column).
    Returns:
        The Dump, one Group per (scenario, engine) when both columns exist, else one.
    Raises:
        DumpError: with every problem found (unreadable file, missing or misaligned columns,
            NaN, +inf or positive logprobs, gaps in positions, nothing left to judge).
    """
    path = Path(path)
    p, overrides = str(path), overrides or {}
    if fmt is not None and fmt not in PRESETS:
        raise DumpError([("--format", fmt, f"unknown format: use one of {', '.join(PRESETS)}")])
    cols = read_columns(path)
    mapping, problems = resolve(list(cols), fmt, overrides, p)
    if problems:
        raise DumpError(problems)
    engine = cols[mapping["engine_logprob"]]
    if len(engine) == 0:
        raise DumpError([(p, "-", "has no rows: nothing to judge")])
    wide = isinstance(engine, list)
    pads = PRESETS[fmt or "parity"].get("mask")
    if wide and pads and "mask" not in mapping and "mask" not in overrides:
        problems.append(
            (
                p,
                "mask",
                f"a {fmt} table pads its list columns and marks the tokens "
                f"in {pads[0]}, which the file lacks: add it, or --map "
                "mask=COLUMN, or --map mask= to judge every position",
            )
        )
    rows = token_rows(cols, {**mapping, **{k: k for k in LABELS if k in cols}}, p, problems)
    if problems:
        raise DumpError(problems)
    if "mask" in rows:
        rows = apply_mask(rows, mapping["mask"], p)
    parity_own = all(m in cols for m in PARITY_MARKERS)
    vals = validate(rows, mapping, p, parity_own, problems)
    if problems:
        raise DumpError(problems)
    groups, notes = _groups(rows, vals, parity_own, p, problems)
    if problems:
        raise DumpError(problems)
    return Dump(
        path,
        sha256(path),
        fmt or "parity",
        mapping,
        "wide" if wide else "long",
        len(engine),
        groups,
        notes,
    )


def _groups(rows, vals, parity_own, path, problems) -> tuple[list[Group], list[str]]:
    """Split the rows into groups (scenario, engine) and sequences (ordered by position)."""
    import pandas as pd  # lazy: pandas, only when a table is read

    keys = [k for k in GROUP_BY if k in rows] if all(k in rows for k in GROUP_BY) else []
    if keys:
        frame = pd.DataFrame({k: rows[k] for k in keys})
        indices = list(frame.groupby(keys, sort=False, dropna=False).indices.values())
    else:
        indices = [np.arange(rows["_row"].size)]
    groups, notes = [], []
    for idx in indices:
        labels = {k: _py(rows[k][idx[0]]) for k in LABELS if k in rows}
        name = "/".join(str(labels[k]) for k in keys) or "all"
        seqs = _sequences(rows, vals, idx, name, path, problems)
        if seqs is None:
            continue
        g = Group(name, labels, [], [], [], *([] if k in vals else None for k in OPTIONAL))
        prompts = []
        for sid, ix in seqs:
            if parity_own:
                scored = ix[~np.isnan(vals["trainer_logprob"][ix])]
                g.dropped_unscored += ix.size - scored.size
                if not (ix := scored).size:
                    continue
            g.sequence_ids.append(_py(sid))
            g.engine.append(vals["engine_logprob"][ix])
            g.trainer.append(vals["trainer_logprob"][ix])
            for k in OPTIONAL:
                if k in vals:
                    getattr(g, k).append(vals[k][ix])
            if "prompt_id" in rows:
                prompts.append(_py(rows["prompt_id"][ix[0]]))
        g.prompt_ids = np.asarray(pd.factorize(np.asarray(prompts, object))[0]) if prompts else None
        if g.dropped_unscored:
            notes.append(
                f"{name}: dropped {g.dropped_unscored} row(s) whose trainer_logprob is "
                "NaN (not scored by the reference, e.g. weight-update probes)"
            )
        if g.engine:
            groups.append(g)
        else:
            notes.append(f"{name}: no scored row left: not judged")
    if not groups and not problems:
        problems.append((path, "trainer_logprob", "no scored row in any group: nothing to judge"))
    return groups, notes


def _sequences(rows, vals, idx, name, path, problems) -> list[tuple[Any, np.ndarray]] | None:
    """(sequence id, row indices in position order) for the rows `idx` of one group; None
    (and a problem) when a sequence's positions are not 0..n-1."""
    import pandas as pd  # lazy: pandas, only when a table is read

    codes, uniques = pd.factorize(rows["sequence_id"][idx])
    counts = np.bincount(codes, minlength=len(uniques))
    if "position" in vals:
        pos = vals["position"][idx]
        order = np.lexsort((pos, codes))
        expected = np.arange(idx.size) - np.repeat(np.cumsum(counts) - counts, counts)
        bad = np.flatnonzero(pos[order] != expected)
        if bad.size:
            s = codes[order][bad[0]]
            got = np.sort(pos[codes == s]).astype(np.int64).tolist()
            shown = ", ".join(map(str, got[:8])) + (", ..." if len(got) > 8 else "")
            where = "" if name == "all" else f" (group {name})"
            problems.append(
                (
                    path,
                    "position",
                    f"sequence {_py(uniques[s])!r}{where} has "
                    f"positions [{shown}], not 0..{len(got) - 1}: "
                    "a gap or a duplicate; each (sequence, "
                    "position) must appear exactly once",
                )
            )
            return None
    else:
        order = np.argsort(codes, kind="stable")
    parts = np.split(idx[order], np.cumsum(counts)[:-1])
    return list(zip(uniques, parts))


def _py(v: Any) -> Any:
    """A numpy scalar as a Python value (for JSON and messages)."""
    v = v.item() if hasattr(v, "item") else v
    return int(v) if isinstance(v, float) and v.is_integer() else v
