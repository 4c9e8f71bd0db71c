"""Row tables on disk (tokens.parquet, exported sequences, trainer scores files): parquet
(pyarrow, zstd) or JSON lines, chosen by the file's suffix, written atomically, read back as
columns of Python values."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parity.data.atomic import atomic_path

FORMATS = (".parquet", ".jsonl")


def format_problem(path: Path) -> str | None:
    """Why a path cannot name a table file (None when its suffix is one parity reads)."""
    if Path(path).suffix not in FORMATS:
        return (
            f"unknown format {Path(path).suffix or '(no suffix)'!r}; name a .parquet or .jsonl file"
        )
    return None


def write_parquet(table, path: Path) -> None:
    """Write a pyarrow Table to `path` (zstd), atomically."""
    import pyarrow.parquet as pq  # lazy: pyarrow, only when a table is read or written

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_rows(columns: dict[str, list], path: Path, schema=None) -> None:
    """Write columns (name -> one value per row) as parquet or JSON lines by `path`'s suffix,
    atomically. `schema`: the pyarrow schema for parquet (inferred when None). JSON lines hold
    non-finite floats as NaN / Infinity / -Infinity (Python's json reads them back)."""
    if Path(path).suffix == ".parquet":
        import pyarrow as pa  # lazy: pyarrow, only when a table is read or written

        write_parquet(pa.table(columns, schema=schema), path)
        return
    names = list(columns)
    n = len(columns[names[0]]) if names else 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({k: _plain(columns[k][i]) for k in names}) + "\n")


def _plain(v: Any) -> Any:
    if hasattr(v, "tolist"):  # numpy arrays and scalars
        return v.tolist()
    return v


def read_columns(path: Path) -> dict[str, list]:
    """A parquet or JSON-lines file as columns (name -> list of Python values; a key a JSON
    line lacks is None there).

    Raises:
        ValueError: the file cannot be parsed (the message names the line for JSON lines).
        OSError: the file cannot be read.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # lazy: pyarrow, only when a table is read or written

        try:
            table = pq.read_table(path)
        except (ValueError, TypeError) as exc:  # ArrowInvalid, ArrowTypeError: not parquet
            raise ValueError(f"not a readable parquet file: {exc}") from exc
        return {name: table.column(name).to_pylist() for name in table.column_names}
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"line {n} is not JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise ValueError(f"line {n} is not a JSON object")
            rows.append(row)
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {k: [row.get(k) for row in rows] for k in names}


def is_nan(v: Any) -> bool:
    """None or a float NaN (a missing number in either format)."""
    return v is None or (isinstance(v, float) and math.isnan(v))
