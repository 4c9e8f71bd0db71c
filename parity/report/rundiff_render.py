"""`parity diff`'s result rendered: the tables (for the terminal and Markdown alike), the lines
around them, report Markdown and a rich console table."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from parity.verdicts.fmt import fmt, md_cell


def _est(side: dict) -> str:
    ci = (
        f" [{fmt(side['ci_low'], 4)}, {fmt(side['ci_high'], 4)}]"
        if side["ci_low"] is not None and side["ci_high"] is not None
        else ""
    )
    return f"{fmt(side['estimate'], 4)}{ci} {side['outcome']}"


def _rel(r: float | None) -> str:
    """-0.998 -> "-99.8%"; past +1000% as a ratio to A: 14.8 -> "x15.8"."""
    return "n/a" if r is None else f"x{r + 1:.3g}" if r >= 10 else f"{r * 100:+.3g}%"


def _arrow(a: Any, b: Any) -> str:
    return fmt(a, 4) if a == b else f"{fmt(a, 4)} -> {fmt(b, 4)}"


def tables(d: dict[str, Any], max_metrics: int = 12) -> list[tuple[str, list[str], list]]:
    """The diff as (title, columns, rows) tables, for the terminal and Markdown alike: the
    scenarios, then per scenario the findings and (at most `max_metrics`) metrics that moved,
    then the engine keys that differ."""
    out = [_scenarios_table(d["scenarios"]), _headlines_table(d["scenarios"])]
    for s in d["scenarios"]:
        out += [_findings_table(s), _metrics_table(s, d, max_metrics)]
    out += [_engine_table(e) for e in d["engines"]]
    return [t for t in out if t is not None]


def _scenarios_table(scenarios: list[dict]) -> tuple[str, list[str], list] | None:
    """One row per paired scenario: verdict, diagnosis and as-expected A -> B, findings and
    metrics moved/compared; None without scenarios."""
    rows = []
    for s in scenarios:
        v, m = s["verdict"], s["metrics"]
        rows.append(
            [
                s["name"],
                f"{v['a']} -> {v['b']}" + (" (MOVED)" if v["moved"] else ""),
                _arrow(s["diagnosis"]["a"] or "-", s["diagnosis"]["b"] or "-"),
                _arrow(s["as_expected"]["a"], s["as_expected"]["b"]),
                f"{sum(f['moved'] for f in s['findings']['compared'])}"
                f"/{len(s['findings']['compared'])}",
                f"{len(m['moved'])}/{m['n_compared']}",
            ]
        )
    if not rows:
        return None
    return (
        "Scenarios (A -> B; findings and metrics: moved/compared)",
        ["scenario", "verdict", "diagnosis", "as expected", "findings", "metrics"],
        rows,
    )


def _headlines_table(scenarios: list[dict]) -> tuple[str, list[str], list] | None:
    """The scenarios whose headline changed, A and B; None when none did."""
    heads = [
        [s["name"], s["headline"]["a"] or "n/a", s["headline"]["b"] or "n/a"]
        for s in scenarios
        if s["headline"]["a"] != s["headline"]["b"]
    ]
    return ("Headlines that changed", ["scenario", "A", "B"], heads) if heads else None


def _findings_table(s: dict) -> tuple[str, list[str], list] | None:
    """A scenario's findings that moved (estimate, interval and outcome on each side, B's limit,
    whether the intervals overlap, the change), then those in one run only; None without any."""
    frows = [
        [
            f["name"],
            f["kind"] or "",
            _est(f["a"]),
            _est(f["b"]),
            fmt(f["b"]["limit"], 4),
            {True: "yes", False: "NO", None: "n/a"}[f["overlap"]],
            _rel(f["rel_change"]),
        ]
        for f in s["findings"]["compared"]
        if f["moved"]
    ]
    frows += [
        [n, "", *where, "", "", ""]
        for side, where in (("a", ("(present)", "(absent)")), ("b", ("(absent)", "(present)")))
        for n in s["findings"][f"only_in_{side}"]
    ]
    if not frows:
        return None
    columns = [
        "finding",
        "kind",
        "A: estimate [CI] outcome",
        "B: estimate [CI] outcome",
        "limit (B)",
        "CIs overlap",
        "change",
    ]
    return (f"{s['name']}: findings that moved", columns, frows)


def _metrics_table(s: dict, d: dict, max_metrics: int) -> tuple[str, list[str], list] | None:
    """A scenario's metrics that moved past d's threshold, at most `max_metrics` of them (a last
    row counts the rest), each A and B with its interval, the change and why; None without."""
    moved = s["metrics"]["moved"]
    mrows = [
        [
            r["path"],
            *(
                fmt(r[k], 4)
                + (
                    f" [{fmt(r['ci_' + k][0], 4)}, {fmt(r['ci_' + k][1], 4)}]"
                    if "ci_a" in r
                    else ""
                )
                for k in "ab"
            ),
            _rel(r["rel_change"]),
            r["why"],
        ]
        for r in moved[:max_metrics]
    ]
    if len(moved) > max_metrics:
        mrows.append([f"... {len(moved) - max_metrics} more (--json lists all)", "", "", "", ""])
    if not mrows:
        return None
    return (
        f"{s['name']}: metrics that moved (> {d['threshold'] * 100:.3g}%)",
        ["metric", "A", "B", "change", "why"],
        mrows,
    )


def _engine_table(e: dict) -> tuple[str, list[str], list] | None:
    """An engine role's configuration keys that differ between the runs, titled with its labels
    and scenarios; None when none differ."""
    if not e["differs"]:
        return None
    title = f"{e['role']} engine {_arrow(e['a'], e['b'])} ({', '.join(e['scenarios'])})"
    return (
        title,
        ["key", "A", "B"],
        [[k["key"], fmt(k["a"], 4), fmt(k["b"], 4)] for k in e["differs"]],
    )


def summary(d: dict[str, Any]) -> list[str]:
    """The lines around the tables: the two runs, unpaired scenarios, the outcome."""
    lines = [
        f"{side}: {r['run_id']} ({r['path']}), engines vLLM "
        f"{', '.join(r['engine_vllm']) or 'n/a'}; harness "
        + ", ".join(f"{k} {v}" for k, v in r["packages"].items())
        for side, r in (("A", d["a"]), ("B", d["b"]))
    ]
    if not d["scenarios"]:
        lines.append("no scenario is in both runs: nothing compared")
    renamed = [
        f"{s['name']} = {s['name_b']} ({s['matched_by']})"
        for s in d["scenarios"]
        if s["name"] != s["name_b"]
    ]
    if renamed:
        lines.append(f"paired although named differently: {', '.join(renamed)}")
    for side in ("a", "b"):
        if d[f"only_in_{side}"]:
            lines.append(f"only in {side.upper()}: {', '.join(d[f'only_in_{side}'])}")
    lines.append(
        f"{len(d['verdicts_moved'])} verdict(s) moved (pass <-> fail)"
        + (f": {', '.join(d['verdicts_moved'])}" if d["verdicts_moved"] else "")
        + f"; exit code {d['exit_code']}"
    )
    return lines


def to_markdown(d: dict[str, Any]) -> str:
    """The diff as Markdown (`parity diff --output FILE.md`)."""

    head = summary(d)
    lines = [f"# parity diff {d['a']['run_id']} -> {d['b']['run_id']}", ""]
    lines += [f"- {line}" for line in head[:-1]] + ["", f"**{head[-1]}**", ""]
    for title, cols, rows in tables(d, max_metrics=50):
        lines += [
            f"## {md_cell(title)}",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
        ]
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows] + [""]
    return "\n".join(lines)


def print_table(d: dict[str, Any], console) -> None:
    """The diff on a rich console."""

    lines = summary(d)
    for line in lines[:-1]:
        console.print(line, highlight=False, markup=False)
    for title, cols, rows in tables(d):
        table = Table(title=escape(title), title_justify="left")
        for col in cols:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*map(escape, row), style="bold red" if "(MOVED)" in row[1] else None)
        console.print(table)
    console.print(lines[-1], highlight=False, markup=False)
