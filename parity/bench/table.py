"""Where a run's wall time went, from its report.json: one table of phases against the floor
(engine starts + generation + reference forward), the harness overhead beside it and the 5 %
target (`python -m parity.bench table RUN_DIR`, `python -m parity.bench run ...`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

TARGET_SHARE = 0.05  # harness overhead (wall - builds - floor) at most 5 % of the wall


def generated_tokens(data: dict[str, Any]) -> int | None:
    """Tokens the engines sampled (timings.tokens_generated; for older reports the scenarios'
    per-role n_tokens, roles that reused another scenario's generations left out)."""
    t = data.get("timings") or {}
    if t.get("tokens_generated") is not None:
        return int(t["tokens_generated"])
    counts = [
        e.get("n_tokens")
        for s in data.get("scenarios") or []
        for e in (s.get("engines") or {}).values()
        if not e.get("reused_sequences")
    ]
    counts = [c for c in counts if c is not None]
    return sum(counts) if counts else None


def scored_tokens(data: dict[str, Any]) -> int | None:
    """Tokens the reference scored, where its counters record them (scored_tokens)."""
    counts = [s.get("scored_tokens") for s in (data.get("reference") or {}).values()]
    counts = [c for c in counts if c is not None]
    return sum(counts) if counts else None


def _share(seconds: float, wall: float) -> float | None:
    """`seconds` as a share of the wall time (None for a run that took no time)."""
    return seconds / wall if wall > 0 else None


def phase_table(data: dict[str, Any]) -> dict[str, Any]:
    """The phases of a report as rows (phase, seconds, share of wall, tokens/s, counts towards
    the floor / overhead / builds), the floor, the overhead and whether it meets the target.

    wall = total_s + report_s (the CLI writes the reports after the run); the floor is engine
    starts + generation + reference forward; overhead = wall - builds - floor, so prepare,
    validate, engine stops, non-reference judging, report writing and anything unaccounted
    ("other") are overhead. A report without build_s (older) counts its builds as overhead.
    """
    t = data.get("timings") or {}

    def sec(*keys: str) -> float:
        return float(sum(t.get(k) or 0.0 for k in keys))

    starts = [e for e in data.get("engines") or [] if e.get("start_s") is not None]
    wall = sec("total_s", "report_s")
    gen_tok, ref_tok = generated_tokens(data), scored_tokens(data)
    rows = [
        ("builds", sec("build_s"), None, "builds"),
        ("prepare + validate", sec("prepare_s", "validate_s"), None, "overhead"),
        (f"engine starts ({len(starts)})", sec("engine_start_s"), None, "floor"),
        ("generation", sec("generate_s"), gen_tok, "floor"),
        ("engine stops", sec("engine_stop_s"), None, "overhead"),
        ("reference forward", sec("score_s"), ref_tok, "floor"),
        ("judging (non-reference)", sec("judge_s"), None, "overhead"),
        ("report writing", sec("report_s"), None, "overhead"),
    ]
    other = wall - sum(r[1] for r in rows)
    rows.append(("other (unaccounted)", other, None, "overhead"))
    floor = sum(r[1] for r in rows if r[3] == "floor")
    overhead = wall - sec("build_s") - floor
    out = [
        {
            "phase": name,
            "seconds": s,
            "share": _share(s, wall),
            "kind": kind,
            "tokens": n,
            "tokens_per_s": (n / s if n is not None and s > 0 else None),
        }
        for name, s, n, kind in rows
    ]
    return {
        "run_id": data.get("run_id"),
        "rows": out,
        "wall_s": wall,
        "floor_s": floor,
        "floor_share": _share(floor, wall),
        "build_s": sec("build_s"),
        "overhead_s": overhead,
        "overhead_share": _share(overhead, wall),
        "target_share": TARGET_SHARE,
        "meets_target": (overhead / wall <= TARGET_SHARE) if wall > 0 else None,
        "recorded": {
            k: k in t for k in ("build_s", "engine_stop_s", "report_s", "tokens_generated")
        },
    }


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def render(table: dict[str, Any], console) -> None:
    """Print the table with rich: phases, then the floor, the overhead and the wall."""

    grid = Table(title=f"where the time went: {table.get('run_id')}")
    for col, justify in (
        ("phase", "left"),
        ("seconds", "right"),
        ("% of wall", "right"),
        ("tokens/s", "right"),
        ("counts as", "left"),
    ):
        grid.add_column(col, justify=justify, no_wrap=col == "phase")
    for r in table["rows"]:
        grid.add_row(
            r["phase"],
            _fmt(r["seconds"], ".1f"),
            _fmt(r["share"], ".1%"),
            _fmt(r["tokens_per_s"], ".0f"),
            r["kind"],
        )
    grid.add_section()
    grid.add_row(
        "floor: starts+gen+ref",
        _fmt(table["floor_s"], ".1f"),
        _fmt(table["floor_share"], ".1%"),
        "",
        "",
    )
    verdict = {True: "[green]meets[/]", False: "[red]misses[/]", None: "n/a"}
    grid.add_row(
        "overhead: wall-builds-floor",
        _fmt(table["overhead_s"], ".1f"),
        _fmt(table["overhead_share"], ".1%"),
        "",
        f"{verdict[table['meets_target']]} {table['target_share']:.0%}",
    )
    grid.add_row("[bold]wall[/]", _fmt(table["wall_s"], ".1f"), "100.0%", "", "")
    console.print(grid)
    missing = [k for k, ok in table["recorded"].items() if not ok]
    if missing:
        console.print(
            f"not in this report (older run, or not written by `parity check`): "
            f"{', '.join(missing)}",
            highlight=False,
        )


def load(run_dir: Path) -> dict[str, Any]:
    """RUN_DIR/report.json (or a report.json path itself)."""
    path = run_dir / "report.json" if run_dir.is_dir() else run_dir
    return json.loads(path.read_text())


def run_check(check_args: list[str], output: Path) -> tuple[int, float]:
    """`parity check CHECK_ARGS --output OUTPUT` in a child process, as a user runs it; returns
    its exit code and wall seconds (interpreter start and scenario loading included)."""
    t0 = time.perf_counter()
    code = subprocess.call(
        [sys.executable, "-m", "parity.cli", "check", *check_args, "--output", str(output)]
    )
    return code, time.perf_counter() - t0
