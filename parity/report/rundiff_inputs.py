"""The inputs of `parity diff`: the two runs' report.json read and checked (every problem at
once, DiffInputError), and their scenarios paired."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Problem = tuple[str, str, str]


class DiffInputError(Exception):
    """Input `parity diff` cannot compare; `problems` lists every (path or option, field,
    message) at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(f"{w}: {f}: {m}" for w, f, m in problems))


def load_report(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Read a `parity check` report.json from a run directory or the file itself.

    Returns:
        (the report, []) or (None, the problems, each naming the path and the fix).
    """
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not path.exists():
        return None, [
            (
                str(path),
                "path",
                "does not exist: pass a run directory (results/"
                "<run-id>/ or check's --output) or its report.json",
            )
        ]
    if not file.is_file():
        what = "no report.json in this directory" if path.is_dir() else "not a regular file"
        return None, [
            (
                str(path),
                "report.json",
                f"{what}: pass the --output directory of a `parity check` run or its report.json",
            )
        ]
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, [
            (
                str(file),
                "report.json",
                f"not readable as JSON ({exc}): pass the report.json a `parity check` run wrote",
            )
        ]
    fix = "parity diff compares the report.json of two `parity check` runs"
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list):
        what = (
            "a `parity judge` report"
            if isinstance(data, dict) and data.get("kind") == "judge"
            else "not a parity check report (no scenarios list)"
        )
        return None, [(str(file), "scenarios", f"{what}: {fix}")]
    problems = []
    for i, sc in enumerate(data["scenarios"]):
        if not (
            isinstance(sc, dict)
            and isinstance(sc.get("name"), str)
            and isinstance(sc.get("verdict"), dict)
        ):
            problems.append(
                (
                    str(file),
                    f"scenarios[{i}]",
                    f"not a scenario record (a name and a verdict): {fix}",
                )
            )
    return (None if problems else data), problems


def match_scenarios(
    a: dict, b: dict, pairs: list[str]
) -> tuple[list, list[str], list[str], list[Problem]]:
    """Pair the scenarios of runs A and B: `pairs` ("A_NAME=B_NAME") first, then equal names,
    then a name that is the other's plus a "-suffix" (logprobs-processed and
    logprobs-processed-0181, as copies run on another engine are often named) where that
    pairing is unique and the categories agree.

    Returns:
        ([(scenario A, scenario B, how)], names only in A, names only in B, problems of pairs).
    """
    left = {s["name"]: s for s in a["scenarios"]}
    right = {s["name"]: s for s in b["scenarios"]}
    matched, problems = [], []
    for spec in pairs:
        na, sep, nb = spec.partition("=")
        missing = [
            f"{n!r} is not a scenario of run {r}"
            for n, r, run in ((na, "A", left), (nb, "B", right))
            if n not in run
        ]
        if not sep or not na or not nb or missing:
            problems.append(
                (
                    "--pair",
                    spec,
                    "; ".join(missing) if sep and na and nb else "expected A_NAME=B_NAME",
                )
            )
            continue
        matched.append((left.pop(na), right.pop(nb), "--pair"))
    for name in [n for n in left if n in right]:
        matched.append((left.pop(name), right.pop(name), "name"))

    def extends(long: str, short: str) -> bool:
        return long.startswith(short + "-")

    for name in list(left):
        cands = [n for n in right if extends(n, name) or extends(name, n)]
        if len(cands) != 1 or right[cands[0]].get("category") != left[name].get("category"):
            continue
        rivals = [n for n in left if extends(n, cands[0]) or extends(cands[0], n)]
        if rivals == [name]:
            matched.append((left.pop(name), right.pop(cands[0]), "name prefix"))
    return matched, list(left), list(right), problems
