"""Per-token tables made elsewhere (a trainer's rollout dump, parity's own tokens.parquet): read
from .parquet/.csv/.jsonl/.json/.pt, their columns mapped onto the canonical schema, validated
with every problem listed at once, and split into sequences for `parity judge`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.data.dumpfiles import DumpError, read_columns, sha256, token_rows

# The canonical schema, long layout (one row per scored token). A wide table (one row per
# sequence, list columns such as verl's [B, T] tensors) is exploded into it.
CANONICAL = {
    "sequence_id": "the sequence a token belongs to (int or str; wide tables: the row number)",
    "engine_logprob": "the rollout engine's logprob of the sampled token (required)",
    "trainer_logprob": "the trainer's logprob of the same token (required; -inf = probability 0)",
    "token_id": "the sampled token id (optional)",
    "position": "0-based position in the completion (optional; orders a sequence's rows)",
    "entropy": "the trainer's entropy at that position (optional)",
    "weight_version": "the policy version that generated the token (optional, nullable int)",
    "prompt_id": "the prompt a sequence answers (optional; its samples are resampled together)",
    "boundary_tie": "1 = the token is tied with the lowest kept logit at the top-k/top-p cut "
    "(optional; such a token the trainer excludes is the tie rule's choice and "
    "does not count)",
    "mask": "1 = a scored token, 0 = padding or prompt, dropped (optional)",
}
REQUIRED = ("engine_logprob", "trainer_logprob")
# parity's own tokens.parquet: rows whose trainer_logprob is NaN were not scored (weight-update
# probes) and are dropped with a count; in any other file NaN is an error.
PARITY_MARKERS = ("scenario", "engine", "trainer_raw_logprob")
GROUP_BY = ("scenario", "engine")  # judged separately when both columns exist
LABELS = ("scenario", "engine", "engine_label")
OPTIONAL = ("entropy", "weight_version", "boundary_tie")  # per-token, Group fields in order
# A logprob above this is no logprob (a probability, a ratio): bf16 log_softmax rounds a
# near-certain token to a few hundredths above 0 at most.
MAX_LOGPROB = 0.1

# Each framework's names for the canonical columns (the first one present wins), read from its
# source: verl verl/trainer/ppo/rollout_corr_helper.py, verl/workers/actor/dp_actor.py,
# verl/experimental/agent_loop/agent_loop.py (uid: ray_trainer.py; param_version_start:
# experimental/fully_async_policy); TRL trl/trainer/grpo_trainer.py (the dict
# _generate_and_score_completions returns); prime-rl src/prime_rl/trainer/rl/loss.py (LossInputs)
# and data.py; NeMo-RL nemo_rl/algorithms/grpo.py (train_data, train_data_step<N>.jsonl).
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "parity": {"prompt_id": ("prompt_id", "prompt_index")},
    "verl": {
        "engine_logprob": ("rollout_log_probs",),
        "trainer_logprob": ("old_log_probs",),
        "mask": ("response_mask",),
        "token_id": ("responses",),
        "entropy": ("entropys",),
        "prompt_id": ("uid",),
        "weight_version": ("param_version_start",),
    },
    "trl": {
        "engine_logprob": ("sampling_per_token_logps",),
        "trainer_logprob": ("old_per_token_logps",),
        "mask": ("completion_mask",),
        "token_id": ("completion_ids",),
    },
    "prime-rl": {
        "engine_logprob": ("inference_logprobs",),
        "trainer_logprob": ("trainer_logprobs",),
        "mask": ("loss_mask",),
        "token_id": ("input_ids",),
        "entropy": ("entropy",),
    },
    "nemo-rl": {
        "engine_logprob": ("generation_logprobs",),
        "trainer_logprob": ("prev_logprobs",),
        "mask": ("token_loss_mask", "token_mask"),
        "token_id": ("token_ids", "input_ids"),
        "sequence_id": ("idx",),
    },
}


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


def parse_map(items: list[str]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """`--map canonical=theirs` options -> {canonical: theirs} ("" = no such column)."""
    out, problems = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            problems.append(
                ("--map", item, "expected canonical=column, e.g. engine_logprob=rollout_log_probs")
            )
        elif key not in CANONICAL:
            problems.append(
                ("--map", key, f"not a canonical column: use one of {', '.join(CANONICAL)}")
            )
        else:
            out[key] = value.strip()
    return out, problems


# ------------------------------------------------------------------------- mapping, layout


def resolve(
    names: list[str],
    fmt: str | None,
    overrides: dict[str, str],
    path: str,
) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """{canonical: the file's column}: --map first, then the preset's names, then the canonical
    name itself. Every problem: a --map column the file lacks, a required column not found."""
    preset = PRESETS[fmt or "parity"]
    shown = ", ".join(names[:40]) + (f" (+{len(names) - 40} more)" if len(names) > 40 else "")
    mapping, problems = {}, []
    for canon in CANONICAL:
        if canon in overrides:
            theirs = overrides[canon]
            if theirs and theirs not in names:
                problems.append(
                    (path, theirs, f"--map {canon}={theirs}: no such column; the file has: {shown}")
                )
            elif theirs:
                mapping[canon] = theirs
            continue
        found = [n for n in preset.get(canon, ()) + (canon,) if n in names]
        if found:
            mapping[canon] = found[0]
    for canon in REQUIRED:
        if canon in mapping or canon in overrides:
            continue
        looked = ", ".join(dict.fromkeys(preset.get(canon, ()) + (canon,)))
        guess = [
            f
            for f, p in PRESETS.items()
            if f != (fmt or "parity")
            and all(any(n in names for n in p.get(c, ())) for c in REQUIRED)
        ]
        hint = (
            f"this looks like a {guess[0]} dump: add --format {guess[0]}"
            if guess
            else f"name it with --map {canon}=COLUMN or use --format {{{','.join(PRESETS)}}}"
        )
        problems.append(
            (
                path,
                canon,
                f"no {canon} column ({CANONICAL[canon]}); looked for "
                f"{looked}; the file has: {shown}; {hint}",
            )
        )
    return mapping, problems


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


def _validate(rows, mapping, path, parity_own, problems) -> dict[str, np.ndarray]:
    """The numeric canonical columns as floats, every problem named (NaN trainer logprobs of
    parity's own format are kept: they mark unscored rows, dropped per sequence later)."""
    vals = {}
    for canon in (
        "engine_logprob",
        "trainer_logprob",
        "entropy",
        "token_id",
        "position",
        "weight_version",
        "boundary_tie",
    ):
        if canon in rows:
            vals[canon] = _floats(rows, canon, mapping.get(canon, canon), path, problems)
    name = mapping.get
    for canon in ("engine_logprob", "trainer_logprob"):
        v = vals.get(canon)
        if v is None:
            continue
        if canon == "engine_logprob" or not parity_own:
            _count(
                rows,
                np.isnan(v),
                "NaN value(s)",
                name(canon),
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
            name(canon),
            canon,
            path,
            "a logprob is at most 0",
            problems,
        )
        _count(
            rows,
            v > MAX_LOGPROB,
            f"value(s) > {MAX_LOGPROB}",
            name(canon),
            canon,
            path,
            "a logprob is at most 0: is this a probability or a ratio column?",
            problems,
        )
    trainer = vals.get("trainer_logprob")
    scored = ~np.isnan(trainer) if parity_own and trainer is not None else True
    if vals.get("entropy") is not None:
        e = vals["entropy"]
        _count(
            rows,
            (~np.isfinite(e) | (e < -1e-6)) & scored,
            "NaN, infinite or negative value(s)",
            name("entropy"),
            "entropy",
            path,
            "an entropy is finite and >= 0; drop the "
            "column with --map entropy= if it is not the trainer's entropy",
            problems,
        )
    for canon in ("token_id", "position"):
        v = vals.get(canon)
        if v is not None:
            _count(
                rows,
                ~np.isfinite(v) | (v != np.round(v)) | (v < 0),
                "missing, negative or non-integer value(s)",
                name(canon, canon),
                canon,
                path,
                "expected integers >= 0",
                problems,
            )
    if vals.get("weight_version") is not None:
        w = vals["weight_version"]
        _count(
            rows,
            np.isinf(w) | (np.isfinite(w) & (w != np.round(w))),
            "non-integer value(s)",
            name("weight_version"),
            "weight_version",
            path,
            "expected integer versions (empty = unknown)",
            problems,
        )
    if vals.get("boundary_tie") is not None:
        t = vals["boundary_tie"]
        _count(
            rows,
            ~(np.isnan(t) | np.isin(t, (0, 1))),
            "value(s) other than 0/1",
            name("boundary_tie"),
            "boundary_tie",
            path,
            "true/false (empty = unknown)",
            problems,
        )
        vals["boundary_tie"] = t == 1
    for canon in ("sequence_id", "prompt_id"):
        if canon in rows:
            _count(
                rows,
                _missing(rows[canon]),
                "missing value(s)",
                name(canon, canon),
                canon,
                path,
                "every token needs one",
                problems,
            )
    return vals


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v is None or (isinstance(v, float) and v != v) for v in values], bool)
    return np.isnan(values) if values.dtype.kind == "f" else np.zeros(values.size, bool)


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
        rows = _apply_mask(rows, mapping["mask"], p)
    parity_own = all(m in cols for m in PARITY_MARKERS)
    vals = _validate(rows, mapping, p, parity_own, problems)
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


def _apply_mask(rows: dict[str, Any], name: str, path: str) -> dict[str, Any]:
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
