"""report.html and `parity report` on a synthetic run shaped like real ones (html_fakes): every
plot drawn has data and none is drawn without, the page is self-contained and escaped, and a
re-render from report.json reads as the live run's report."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from html_fakes import report_data, tokens_frame, write_run
from typer.testing import CliRunner

from parity.cli import app
from parity.report import build, files, html, markdown, metric_plots, plots, token_plots
from parity.verdicts.formulas import ClipRange

CLIP = ClipRange(0.2, 0.28)


def marks(svg: str) -> int:
    """Data artists in an SVG (plots.DATA_ID ids), as report.html's script counts groups."""
    return len(re.findall(rf'id="{plots.DATA_ID}-', svg))


@pytest.fixture(scope="module")
def run():
    data = report_data()
    return data, tokens_frame(data)


@pytest.fixture(scope="module")
def page(run):
    """The synthetic run's page (rendered once: matplotlib takes seconds)."""
    return html.render(*run)


def rows_of(frame, name):
    return frame[frame["scenario"] == name]


def test_token_plots_have_data_and_none_without(run):
    data, frame = run
    rows = rows_of(frame, "rl-compare")
    for svg in (
        token_plots.log_ratio_hist(rows[rows["engine"] == "candidate"], CLIP, "candidate", "a"),
        token_plots.abs_dlogp_by_position(rows, "b"),
        token_plots.position_curves(rows, CLIP, "c"),
        token_plots.weight_versions(rows_of(frame, "update"), "d"),
    ):
        assert svg.startswith("<svg") and marks(svg) > 0
        assert "<?xml" not in svg and "<metadata>" not in svg
    empty = frame.iloc[:0]
    assert token_plots.log_ratio_hist(empty, CLIP, "candidate", "a") is None
    assert token_plots.abs_dlogp_by_position(empty, "b") is None
    assert token_plots.position_curves(empty, CLIP, "c") is None
    assert token_plots.weight_versions(empty, "d") is None
    # Tokens the reference did not score (NaN) are no data either.
    unscored = rows.assign(trainer_logprob=np.nan)
    assert token_plots.log_ratio_hist(unscored, CLIP, "candidate", "a") is None


def test_position_plot_subsamples_large_runs(run):
    _, frame = run
    rows = rows_of(frame, "rl-compare")
    svg = token_plots.abs_dlogp_by_position(rows, "p", max_points=10)
    assert "candidate tokens (10 of 96)" in svg and "baseline tokens (10 of 96)" in svg
    assert svg.count("<use ") < token_plots.abs_dlogp_by_position(rows, "p").count("<use ")


def test_unjudged_scenario_still_renders(run):
    data, _ = run
    data = json.loads(json.dumps(data))
    rec = data["scenarios"][0]
    rec.update(
        metrics=None,
        verdict={
            "outcome": "unresolved",
            "diagnosis": "engine_failed",
            "message": "engine crashed",
            "findings": [],
            "preconditions": [],
        },
    )
    rec["engines"]["candidate"]["error"] = "RuntimeError: boom\ntraceback"
    page = html.render({**data, "scenarios": [rec]}, None)
    assert "engine crashed" in page and "RuntimeError: boom" in page
    assert "traceback" not in page and '<figure class="plot' not in page


def test_histogram_marks_the_scenarios_clip_bounds(run):
    _, frame = run
    rows = rows_of(frame, "logprobs-raw")
    svg = token_plots.log_ratio_hist(rows, CLIP, "candidate", "h")
    assert f"{math.log(0.8):.3g}" in svg and f"{math.log(1.28):.3g}" in svg
    r = rows["trainer_logprob"] - rows["engine_logprob"]
    r = r[np.isfinite(r)]
    clipped = int(((r < math.log(0.8)) | (r > math.log(1.28))).sum())
    assert clipped > 0 and f"{len(r)} tokens, {clipped} outside the clip range" in svg
    wider = token_plots.log_ratio_hist(rows, ClipRange(0.5, 0.5), "candidate", "h")
    assert f"{math.log(0.5):.3g}" in wider


def test_json_plots_have_data_and_none_without(run):
    data, _ = run
    by_name = {s["name"]: s for s in data["scenarios"]}
    rl = by_name["rl-compare"]
    svgs = [
        metric_plots.rl_side_by_side(rl["metrics"]["per_role"], "r"),
        metric_plots.finding_intervals(rl["verdict"]["findings"], "f"),
        metric_plots.lm_head_evidence(by_name["lmhead"]["metrics"], "l"),
        metric_plots.update_evidence(by_name["update"]["metrics"], "u"),
    ]
    for svg in svgs:
        assert svg.startswith("<svg") and marks(svg) > 0
    # rl: both roles' bars on each of the five metrics; intervals: the two findings with a CI.
    assert marks(svgs[0]) == 10
    assert "kl_k3 (non_inferiority" in svgs[1] and "excluded_tokens" not in svgs[1]
    assert (
        metric_plots.rl_side_by_side({"candidate": rl["metrics"]["per_role"]["candidate"]}, "r")
        is None
    )
    assert metric_plots.finding_intervals(by_name["lmhead"]["verdict"]["findings"], "f") is None
    assert metric_plots.lm_head_evidence(rl["metrics"], "l") is None
    assert metric_plots.update_evidence(rl["metrics"], "u") is None
    # in flight: its own comparisons, found by name
    inflight = metric_plots.update_evidence(
        {
            "abs_dlogp_pre_vs_old": 3e-7,
            "abs_dlogp_post_vs_keep": 7e-7,
            "abs_dlogp_post_vs_recompute": 0.48,
        },
        "i",
    )
    assert marks(inflight) == 3 and "post vs recompute" in inflight


def figures(page: str) -> dict[str, str]:
    """id -> figure HTML of every plot on a page."""
    return dict(
        re.findall(r'<figure class="plot[^"]*" id="([^"]+)">(.*?)</figure>', page, flags=re.S)
    )


def test_page_draws_each_plot_where_its_data_is(run, page):
    data, frame = run
    figs = figures(page)
    assert figs and all(marks(f) > 0 for f in figs.values())
    # scenario 0 logprobs, 1 rl (two roles), 2 lm_head (no token rows), 3 weight_update
    assert {
        "plot-s0-hist-candidate",
        "plot-s0-pos",
        "plot-s0-curves",
        "plot-s0-intervals",
        "plot-s1-hist-baseline",
        "plot-s1-hist-candidate",
        "plot-s1-roles",
        "plot-s1-intervals",
        "plot-s2-lmhead",
        "plot-s3-versions",
        "plot-s3-update",
    } <= set(figs)
    assert not any(k.startswith("plot-s2-hist") or k == "plot-s0-versions" for k in figs)
    without = figures(html.render(data, None))
    assert not any("hist" in k or "curves" in k or "versions" in k for k in without)
    assert "plot-s2-lmhead" in without


def test_page_is_self_contained_and_responsive(run, page):
    data, frame = run
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "@media" in page and "<link" not in page and "@import" not in page
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page)
    assert refs and all(not r.lower().startswith(("http:", "https:", "//")) for r in refs)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", page)
    assert "<script src" not in page
    assert page == html.render(data, frame)  # deterministic: same data, same bytes


def test_page_escapes_text(run):
    evil = '<img src=x onerror="alert(1)">&'
    data = report_data(name_prefix=evil)
    data["scenarios"][0]["verdict"]["message"] = "<b>bold</b> & more"
    data["provenance"]["platform"] = "<script>alert(2)</script>"
    data["engines"] = [
        {
            "n": 1,
            "setting": {"profile": "<i>p</i>", "engine_args": {}},
            "scenarios": [evil],
            "effective_config": {"key": {"<u>k</u>": "<s>v"}},
        }
    ]
    page = html.render(data, tokens_frame(data))
    assert evil not in page and "<b>bold</b>" not in page and "<script>alert" not in page
    assert "<i>p</i>" not in page and "<u>k</u>" not in page and "<s>v" not in page
    assert "&lt;u&gt;k&lt;/u&gt;" in page  # the engines card shows the effective config
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in page


def test_default_clip_is_said_when_absent(run):
    data, frame = run
    data = json.loads(json.dumps(data))
    data["scenarios"] = data["scenarios"][:1]  # one card is enough (matplotlib is slow)
    del data["scenarios"][0]["clip"]
    page = html.render(data, frame)
    assert "clip not in report.json: parity&#x27;s default eps_low=0.2, eps_high=0.28" in page


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_parity_report_rerenders(tmp_path):
    data, _ = write_run(tmp_path / "run")
    result = invoke("report", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    md = (tmp_path / "run" / "report.md").read_text()
    assert md == markdown.to_markdown(data) and "rl-compare" in md
    page = (tmp_path / "run" / "report.html").read_text()
    assert "plot-s1-hist-baseline" in page  # tokens.parquet was read


def test_live_markdown_equals_rerendered(tmp_path):
    from test_report import results

    run = results(
        ("logprobs-processed", "fail", "x"), ("logprobs-raw-control", "fail", "raw_logprobs")
    )
    for res in run.results:
        res.detail = {"headline": f"{res.scenario.name} headline", "key_metric": 0.5}
    files.write(run, tmp_path, build.exit_code(run))
    live = (tmp_path / "report.md").read_text()
    assert "logprobs-raw-control headline" in live
    assert (tmp_path / "report.html").exists()
    assert invoke("report", str(tmp_path)).exit_code == 0
    assert (tmp_path / "report.md").read_text() == live


def test_failed_page_keeps_the_other_reports(tmp_path, monkeypatch):
    from test_report import results

    def broken(data, tokens=None):
        raise RuntimeError("no plots today")

    monkeypatch.setattr(html, "render", broken)
    run = results(("logprobs-processed", "pass", None))
    files.write(run, tmp_path, 0)
    for name in ("report.json", "report.md", "junit.xml"):
        assert (tmp_path / name).stat().st_size > 0
    assert "no plots today" in (tmp_path / "report.html").read_text()
    # `parity report` says so too, and still writes report.md
    (tmp_path / "report.md").unlink()
    result = invoke("report", str(tmp_path))
    assert result.exit_code == 1 and "no plots today" in result.output
    assert (tmp_path / "report.md").exists()


@pytest.mark.parametrize(
    "setup, expect",
    [
        ("missing", "no such directory"),
        ("empty", "report.json: not found"),
        ("invalid", "report.json: not valid JSON (line 1"),
        ("not-a-report", "not a `parity check` report"),
    ],
)
def test_parity_report_bad_input_exits_2(tmp_path, setup, expect):
    run_dir = tmp_path / "run"
    if setup != "missing":
        run_dir.mkdir()
    if setup == "invalid":
        (run_dir / "report.json").write_text('{"run_id": ')
    if setup == "not-a-report":
        (run_dir / "report.json").write_text("[1, 2]")
    result = invoke("report", str(run_dir))
    assert result.exit_code == 2
    output = result.output.replace("\n", "")  # rich wraps long lines
    assert expect in " ".join(result.output.split()) and str(run_dir) in output
    assert "parity check" in output
    assert not (run_dir / "report.html").exists()


def test_stale_tokens_file_is_not_this_runs(tmp_path):
    data, _ = write_run(tmp_path / "run")
    data["tokens"] = {"file": "tokens.parquet", "error": "not written"}
    (tmp_path / "run" / "report.json").write_text(json.dumps(data))
    assert html.load_tokens(data, tmp_path / "run") is None
    assert isinstance(
        html.load_tokens({"tokens": {"file": "tokens.parquet", "rows": 1}}, tmp_path / "run"),
        pd.DataFrame,
    )
