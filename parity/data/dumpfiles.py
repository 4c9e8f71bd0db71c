"""Reading a per-token table (.parquet, .csv, .jsonl/.json, .pt) into columns and a wide one
(a list per row) into token rows, for parity.data.dumps to map and validate; every unreadable file
is a DumpError naming it."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


class DumpError(Exception):
    """Problems with a table, each (file or option, column, message naming the fix)."""

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{f}: {c}: {m}" for f, c, m in problems))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_columns(path: Path) -> dict[str, Any]:
    """The file's columns: name -> 1-D numpy array (one value per row) or list of 1-D arrays
    (one list per row, a wide table). Raises DumpError when the file cannot be read."""
    path = Path(path)
    p = str(path)
    if not path.exists():
        raise DumpError([(p, "-", "does not exist")])
    if not path.is_file():
        raise DumpError([(p, "-", "is not a regular file")])
    suffix = path.suffix.lower()
    readers = {
        ".parquet": _read_arrow,
        ".csv": _read_arrow,
        ".jsonl": _read_json,
        ".json": _read_json,
        ".pt": _read_torch,
        ".pth": _read_torch,
    }
    if suffix not in readers:
        raise DumpError(
            [
                (
                    p,
                    "-",
                    f"unknown file type {suffix or '(none)'!r}: use .parquet, "
                    ".csv, .jsonl, .json or .pt",
                )
            ]
        )
    if path.stat().st_size == 0:
        raise DumpError([(p, "-", "is empty (0 bytes): nothing to judge")])
    try:
        cols = readers[suffix](path)
    except DumpError:
        raise
    except Exception as exc:  # every reader's own parse errors: one line, exit 2
        raise DumpError(
            [(p, "-", f"cannot be read as {suffix[1:]}: {type(exc).__name__}: {str(exc)[:300]}")]
        ) from exc
    lengths = {k: len(v) for k, v in cols.items()}
    usual = Counter(lengths.values()).most_common(1)[0][0] if lengths else 0
    if any(n != usual for n in lengths.values()):
        raise DumpError(
            [
                (
                    p,
                    k,
                    f"has {n} rows where the other columns have {usual}: every "
                    "column needs one entry per row",
                )
                for k, n in lengths.items()
                if n != usual
            ]
        )
    if not cols:
        raise DumpError([(p, "-", "holds no columns: nothing to judge")])
    return cols


def _read_arrow(path: Path) -> dict[str, Any]:
    import pyarrow as pa  # lazy: pyarrow, only when a table is read or written
    import pyarrow.compute as pc  # lazy: pyarrow, only when a table is read or written

    if path.suffix.lower() == ".csv":
        from pyarrow import csv  # lazy: pyarrow, only when a table is read or written

        table = csv.read_csv(path)
    else:
        from pyarrow import parquet  # lazy: pyarrow, only when a table is read or written

        table = parquet.read_table(path)
    out = {}
    for name, col in zip(table.column_names, table.columns):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        if (
            pa.types.is_list(col.type)
            or pa.types.is_large_list(col.type)
            or pa.types.is_fixed_size_list(col.type)
        ):
            lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
            flat = col.flatten().to_numpy(zero_copy_only=False)
            out[name] = np.split(flat, np.cumsum(lengths)[:-1]) if len(col) else []
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def _read_json(path: Path) -> dict[str, list]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        data = json.loads(text)
    if isinstance(data, dict):  # {column: [value per row]}
        return {k: _column(v if isinstance(v, list) else [v]) for k, v in data.items()}
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DumpError(
            [(str(path), "-", "expected JSON objects (one per row) or one object of columns")]
        )
    keys = list(dict.fromkeys(k for row in data for k in row))
    return {k: _column([row.get(k) for row in data]) for k in keys}


def _column(values: list) -> Any:
    """One column from Python values: lists (a wide column; NeMo-RL's [[...]] unwrapped) or
    scalars."""
    if (
        values
        and all(isinstance(v, list) or v is None for v in values)
        and any(isinstance(v, list) for v in values)
    ):
        rows = []
        for v in values:
            while isinstance(v, list) and len(v) == 1 and isinstance(v[0], list):
                v = v[0]
            rows.append(np.asarray([np.nan if x is None else x for x in (v or [])]))
        return rows
    # NeMo-RL writes every per-row value as a one-element list
    values = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]
    if all(isinstance(v, (int, float)) for v in values):
        return np.asarray(values)
    if all(v is None or isinstance(v, (int, float)) for v in values):
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.asarray(values, dtype=object)


def _read_torch(path: Path) -> dict[str, Any]:
    import torch  # lazy: torch takes seconds to import

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DumpError(
            [
                (
                    str(path),
                    "-",
                    f"cannot be loaded with torch.load(weights_only=True) "
                    f"({type(exc).__name__}: {str(exc)[:200]}): save a "
                    "plain dict of tensors, e.g. torch.save({k: "
                    "batch.batch[k] for k in KEYS}, path)",
                )
            ]
        ) from exc
    if not isinstance(data, dict):
        raise DumpError(
            [
                (
                    str(path),
                    "-",
                    f"holds a {type(data).__name__}: expected a dict of "
                    "tensors ([B, T] or [B]) or of per-token 1-D tensors",
                )
            ]
        )
    flat: dict[str, Any] = {}
    for key, value in data.items():  # one level of nesting ({"batch": {...}, ...}) flattened
        for k, v in value.items() if isinstance(value, dict) else [(key, value)]:
            flat[k if k not in flat else f"{key}.{k}"] = v
    out = {}
    for k, v in flat.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().float() if v.is_floating_point() else v.detach()
            if v.dim() == 2:
                out[k] = list(v.numpy())
            elif v.dim() == 1:
                out[k] = v.numpy()
            elif v.dim() != 0:  # a scalar is metadata; more dims are not a token table
                raise DumpError(
                    [(str(path), k, f"has shape {list(v.shape)}: expected [B, T] or [B]")]
                )
        elif isinstance(v, (list, tuple)) and v and all(isinstance(t, torch.Tensor) for t in v):
            out[k] = [t.detach().float().numpy().reshape(-1) for t in v]  # ragged rows
        elif isinstance(v, (list, tuple)):
            out[k] = _column(list(v))
    return out


def token_rows(
    cols: dict[str, Any],
    names: dict[str, str],
    path: str,
    problems: list,
) -> dict[str, np.ndarray]:
    """The columns `names` ({canonical or label: the file's column}) one entry per token: a
    wide table exploded row by row, with `_row` (the file's row) and `_pos` (the position in a
    wide row, else None). Every misaligned column is added to `problems`."""
    engine_col = names["engine_logprob"]
    if not isinstance(cols[engine_col], list):  # long layout
        out = {"_row": np.arange(len(cols[engine_col])), "_pos": None}
        for canon, name in names.items():
            if isinstance(cols[name], list):
                problems.append(
                    (
                        path,
                        name,
                        f"{canon} holds a list per row while "
                        f"{_named('engine_logprob', engine_col)} holds "
                        "one value: a table is either long (one token "
                        "per row) or wide (one sequence per row)",
                    )
                )
            else:
                out[canon] = np.asarray(cols[name])
        return out
    lens = np.array([len(r) for r in cols[engine_col]], dtype=np.int64)
    row = np.repeat(np.arange(lens.size), lens)
    starts = np.repeat(np.cumsum(lens) - lens, lens)
    out = {"_row": row, "_pos": np.arange(row.size) - starts}
    for canon, name in names.items():
        col = cols[name]
        if not isinstance(col, list):
            out[canon] = np.repeat(np.asarray(col), lens)
            continue
        got = np.array([len(r) for r in col], dtype=np.int64)
        bad = np.flatnonzero(got != lens)
        if bad.size:
            problems.append(
                (
                    path,
                    name,
                    f"{canon} has {got[bad[0]]} values in row {bad[0]} "
                    f"where {_named('engine_logprob', engine_col)} has "
                    f"{lens[bad[0]]} ({bad.size} of {lens.size} rows "
                    "differ): list columns must align token by token, "
                    "with the same padding",
                )
            )
        else:
            out[canon] = np.concatenate(col) if col else np.zeros(0)
    out.setdefault("sequence_id", row)  # rows keep their order: no position needed
    return out


def _named(canon: str, column: str) -> str:
    return canon if canon == column else f"{canon} ({column})"
