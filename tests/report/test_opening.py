"""The table that opens a report (parity.report.opening): V0 vs V1 on the RL metrics, each
value with its interval, per engine; in report.md, report.html and on the terminal. From a
fake report.json with two rl scenarios sharing a V0 baseline, as the quick suite has."""

import copy
import io

from html_fakes import report_data
from rich.console import Console

from parity.report import files, html, markdown, opening


def _iv(mean, half):
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "confidence": 0.9}


V0 = {"clip_rate": _iv(0.149, 0.01), "kl_k3": _iv(0.0197, 0.002), "entropy": _iv(0.66, 0.05)}
V0 |= {"reward": _iv(0.177, 0.06), "abs_dlogp": _iv(0.108, 0.005)}
PARITY = {k: _iv(v["mean"] / 10, 0.001) for k, v in V0.items()}
DEFAULTS = {k: _iv(v["mean"] * 3, 0.002) for k, v in V0.items()}


def _engine(label, impl, version):
    return {"label": label, "engine_impl": impl, "vllm_version": version}


def data_with_pair() -> dict:
    data = report_data()
    (rl,) = [s for s in data["scenarios"] if s["category"] == "rl"]
    rl["name"] = "rl-v0-vs-v1-parity"
    base = rl["engines"].get("baseline") or copy.deepcopy(rl["engines"]["candidate"])
    rl["engines"]["baseline"] = base | _engine(
        "v0", "vllm.engine.llm_engine.LLMEngine", "0.8.5.post2"
    )
    rl["engines"]["candidate"] |= _engine(
        "v1-parity", "vllm.v1.engine.llm_engine.LLMEngine", "0.32.0"
    )
    rl["metrics"]["intervals"] = {"baseline": V0, "candidate": PARITY}
    ctl = copy.deepcopy(rl)
    ctl["name"] = "rl-v0-vs-v1-defaults"
    ctl["expect"], ctl["as_expected"] = "fail", True
    ctl["verdict"] |= {"outcome": "fail", "diagnosis": "raw_logprobs"}
    ctl["engines"]["candidate"]["label"] = "v1-defaults"
    ctl["metrics"]["intervals"] = {"baseline": V0, "candidate": DEFAULTS}
    data["scenarios"].insert(data["scenarios"].index(rl) + 1, ctl)
    return data


def test_rows_show_the_shared_baseline_once_then_each_candidate_with_its_verdict():
    rows = opening.rows(data_with_pair())
    assert [(r.role, r.engine) for r in rows] == [
        ("baseline", "V0 `v0` (vLLM 0.8.5.post2)"),
        ("candidate", "V1 `v1-parity` (vLLM 0.32.0)"),
        ("candidate", "V1 `v1-defaults` (vLLM 0.32.0)"),
    ]
    assert [r.verdict for r in rows] == ["", "pass", "fail (raw_logprobs)"]
    assert opening.title(rows) == "V0 vs V1 on the RL metrics"
    assert opening.cell(rows[0], "clip_rate") == "0.149 [0.139, 0.159]"
    # A baseline with other samples (another sampling, another engine) gets its own row.
    data = data_with_pair()
    data["scenarios"][2]["metrics"]["intervals"]["baseline"] = PARITY
    assert [r.role for r in opening.rows(data)].count("baseline") == 2


def test_report_md_and_html_open_with_the_table():
    data = data_with_pair()
    md = markdown.to_markdown(data)
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[0] == "## V0 vs V1 on the RL metrics"
    table = md.split(sections[0])[1].split("\n\n")[1].splitlines()
    assert table[0].startswith("| engine | role | scenario: verdict | clip rate | k3 KL |")
    assert "\\|dlogp\\|" in table[0] and len(table) == 5
    assert "| V1 `v1-defaults` (vLLM 0.32.0) | candidate | rl-v0-vs-v1-defaults: " in table[4]
    assert "0.0591 [0.0571, 0.0611]" in table[4]  # the defaults' k3, 3 x the baseline's
    page = html.render(data)
    assert page.index('id="opening"') < page.index("rl-v0-vs-v1-parity</")
    assert "<b>fail (raw_logprobs)</b>" in page and "V0 v0 (vLLM 0.8.5.post2)" in page


def test_a_metric_missing_reads_na_and_a_run_without_rl_has_no_table():
    data = data_with_pair()
    del data["scenarios"][1]["metrics"]["intervals"]["candidate"]["reward"]
    row = opening.rows(data)[1]
    assert opening.cell(row, "reward") == "n/a"
    data["scenarios"] = [s for s in data["scenarios"] if s["category"] != "rl"]
    assert opening.rows(data) == [] and opening.markdown(data) == []
    assert opening.html(data) == "" and 'id="opening"' not in html.render(data)
    assert "## V0 vs V1" not in markdown.to_markdown(data)


def test_terminal_shows_one_column_per_engine_within_100_columns():
    out = io.StringIO()
    files.print_opening(data_with_pair(), Console(file=out, width=100))
    text = out.getvalue()
    assert "V0 vs V1 on the RL metrics" in text and "V1 v1-defaults (candidate)" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "fail (raw_logprobs)" in text and "0.149 [0.139, 0.159]" in text
