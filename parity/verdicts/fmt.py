"""The one number formatter of messages, tables and reports."""

from __future__ import annotations

import json
import math
from typing import Any


def fmt(v: Any, digits: int = 3) -> str:
    """A value as people read it: "n/a" when not measured (None, NaN, +-inf), a float to
    `digits` significant digits, a table or list as (at most 200 characters of) JSON."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else "n/a"
    if isinstance(v, (dict, list)):
        return json.dumps(v)[:200]
    return str(v)


def md_cell(text: object) -> str:
    """`text` as one Markdown table cell: '|' escaped (a |dlogp| would split the row), newlines
    as spaces."""
    return str(text).replace("|", "\\|").replace("\n", " ")
