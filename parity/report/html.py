"""report.html: one self-contained page per run (inline CSS and SVG plots, no network), rendered
from report.json's data and, where present, tokens.parquet; readable on a phone and a wide
screen. Its sections are parity.report.html_cards; `parity report` re-renders a run directory here."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.data.atomic import atomic_write
from parity.report import plots
from parity.report.html_cards import engines_card, scenario_card, summary
from parity.report.markdown import to_markdown
from parity.run.faults import describe

if TYPE_CHECKING:
    import pandas

FILE = "report.html"

CSS = """
:root{--fg:#1d2330;--mute:#5b6475;--line:#d9dde5;--bg:#f6f7f9;--card:#fff;
--pass:#1a7f37;--fail:#c62828;--warn:#a15c00;--unres:#7b1fa2}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
main{max-width:1200px;margin:0 auto;padding:12px}
h1{font-size:1.35em;margin:.3em 0}h2{font-size:1.15em;margin:0 0 .4em}
h3{font-size:1em;margin:1em 0 .4em}#opening{margin-top:.8em}
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
summary{cursor:pointer;margin:4px 0}
code{font-size:.9em;background:var(--bg);padding:0 3px;border-radius:3px}
@media (max-width:600px){body{font-size:14px}main{padding:6px}.card{padding:10px 8px}
table{width:max-content;min-width:100%}td{max-width:75vw}}
"""

# Counts the data marks of every plot (plots.DATA_ID) and writes the count on its figure; a
# drawn plot without data is a console error (the browser test reads both).
SCRIPT = (
    """
document.querySelectorAll('figure.plot').forEach(function (fig) {
  var n = 0;
  fig.querySelectorAll('svg [id^="%s"]').forEach(function (g) {
    n += g.matches('path,use,rect') ? 1 : g.querySelectorAll('path,use,rect').length;
  });
  fig.setAttribute('data-marks', String(n));
  if (n === 0) { console.error('plot without data: ' + fig.id); }
});
document.body.setAttribute('data-plots-checked', 'yes');
"""
    % plots.DATA_ID
)


def render(data: dict[str, Any], tokens: pandas.DataFrame | None = None) -> str:
    """The page of one run: report.json's data, and the per-token table (tokens.parquet as a
    DataFrame; None: the plots that need it are left out)."""
    title = f"parity report {data.get('run_id')}"
    cards = [scenario_card(rec, tokens, i) for i, rec in enumerate(data.get("scenarios") or [])]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{summary(data)}{''.join(cards)}{engines_card(data)}"
        '<p class="mute">Every number is in report.json beside this page; '
        "report.md has the same tables as text.</p></main>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def failed(why: str) -> str:
    """A minimal page saying why report.html could not be rendered."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>parity report (not rendered)</title></head><body>"
        f"<h1>report.html could not be rendered</h1><p>{escape(why)}</p>"
        "<p>report.json and report.md beside this file are complete; "
        "<code>parity report DIR</code> renders this page again.</p></body></html>\n"
    )


def load_tokens(data: dict[str, Any], out_dir: Path):
    """The run's tokens.parquet as a DataFrame, or None when report.json records none written
    (a file left from an earlier run in the same directory is not this run's)."""
    tok = data.get("tokens") or {}
    path = Path(out_dir) / str(tok.get("file") or "tokens.parquet")
    if tok.get("rows") is None or not path.exists():
        return None
    import pandas as pd  # lazy: pandas, only when a table is read

    return pd.read_parquet(path)


class RenderError(Exception):
    """report.html could not be rendered; the page written in its place says why."""


def write_page(data: dict[str, Any], out_dir: Path) -> Path:
    """Render and write out_dir/report.html (atomically) from report.json's data and the
    directory's tokens.parquet.

    Raises:
        RenderError: rendering failed (a minimal page saying why was written instead).
        OSError: the page cannot be written (as for every other report file).
    """
    path = Path(out_dir) / FILE
    try:
        page = render(data, load_tokens(data, out_dir))
    except Exception as exc:  # a bug or an unexpected report shape: say so on the page
        why = f"rendering failed: {describe(exc)}"
        atomic_write(path, failed(why))
        raise RenderError(f"{path}: {why}") from exc
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
        raise RunDirError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); re-run `parity check` to write it again"
        ) from exc
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("scenarios"), list)
        or "run_id" not in data
    ):
        raise RunDirError(f"{path}: not a `parity check` report (no run_id and scenarios); {fix}")
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
        RunDirError: as load().
        RenderError: report.html could not be rendered (report.md is written).
    """

    data = load(run_dir)
    md = Path(run_dir) / "report.md"
    atomic_write(md, to_markdown(data))
    return [md, write_page(data, run_dir)]
