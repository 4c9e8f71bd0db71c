"""A command line that fits CI: -k/--category and quick-run overrides (pure), --json (stdout
carries the machine summary only), --junit PATH, $GITHUB_STEP_SUMMARY, short engine labels,
unwrapped lines in logs, progress lines; end to end against a fake served engine."""

import json

import pytest
from conftest import SCENARIOS, run_cli
from fake_openai_server import FakeServer

from parity.engines.settings import parse_setting
from parity.report import summary
from parity.run import selection
from parity.run.scenario import load_scenarios

SHIPPED = load_scenarios([SCENARIOS])
CATS = ["lm_head", "logprobs", "rl", "runtime", "weight_update"]


def test_select_by_pattern_and_category():
    picked, problems = selection.select(SHIPPED, ["raw"], [], CATS)
    assert not problems and [s.name for s in picked] == ["logprobs-raw-control"]
    picked, _ = selection.select(SHIPPED, ["update-*-control", "LMHEAD-v1"], [], CATS)
    assert {s.name for s in picked} == {
        "update-stale-cache-control",
        "update-inplace-control",
        "update-stale-layer-control",
        "update-step-stale-cache-control",
        "update-step-stale-head-control",
        "update-step-stale-layer-control",
        "lmhead-v1-fp32",
        "lmhead-v1-bf16-control",
    }
    picked, _ = selection.select(SHIPPED, [], ["rl", "lm_head"], CATS)
    assert {s.category for s in picked} == {"rl", "lm_head"}
    picked, _ = selection.select(SHIPPED, ["v0"], ["rl"], CATS)  # both must hold
    assert {s.name for s in picked} == {"rl-v0-vs-v1-defaults", "rl-v0-vs-v1-parity"}


def test_selection_problems_name_the_option_and_the_choices():
    _, problems = selection.select(SHIPPED, [], ["logprob"], CATS)
    assert problems[0][:2] == ("--category", "logprob") and "logprobs" in problems[0][2]
    _, problems = selection.select(SHIPPED, ["nothing-like-this"], [], CATS)
    assert problems[0][0] == "-k/--category" and "logprobs-processed" in problems[0][2]


def test_quick_run_overrides():
    (sc,) = [s for s in SHIPPED if s.name == "logprobs-processed"]
    (quick,), problems = selection.override([sc], prompts=3, max_tokens=5, seed=7)
    assert not problems
    assert quick.prompt_source.endswith(":3") and quick.sampling.max_tokens == 5
    assert quick.sampling.seed == 7 and quick.sampling.temperature == sc.sampling.temperature
    assert {quick.provenance[k] for k in ("prompts", "max_tokens", "seed")} == {"cli"}
    assert sc.sampling.max_tokens != 5  # the original is untouched
    _, problems = selection.override([sc], prompts=0, max_tokens=0, seed=-1)
    assert [p[0] for p in problems] == ["--prompts", "--max-tokens", "--seed"]


def test_labels_are_the_profile_plus_what_differs():
    label = lambda text: parse_setting(text, "x")[0].label()  # noqa: E731
    assert label("v1-parity") == "v1-parity"
    assert (
        label("v1-defaults,logprobs_mode=processed_logprobs")
        == "v1-defaults [logprobs_mode=processed_logprobs]"
    )
    assert (
        label("v1-parity,hf_overrides.head_dtype=bfloat16,env.X=1")
        == "v1-parity [hf_overrides.head_dtype=bfloat16, env.X=1]"
    )
    assert label("v1-parity,enforce_eager=true") == "v1-parity"  # the profile's own value


def test_bad_selection_is_exit_2_before_anything_starts(tmp_path):
    result = run_cli(
        [
            "check",
            str(SCENARIOS),
            "-k",
            "zzz",
            "--category",
            "nope",
            "--prompts",
            "0",
            "--junit",
            str(tmp_path / "no" / "j.xml"),
            "--dry-run",
        ]
    )
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    for what in ("--category: nope", "--prompts: value", "--junit: PATH"):
        assert what in text, (what, result.output)


def test_summaries_from_report_data(tmp_path):
    data = {
        "run_id": "r1",
        "exit_code": 1,
        "interrupted": None,
        "scenarios": [
            {
                "name": "a|b",
                "category": "logprobs",
                "expect": "pass",
                "as_expected": False,
                "key_metric": "|dlogp| 0.26",
                "verdict": {"outcome": "fail", "diagnosis": "raw_logprobs", "message": "m"},
            },
            {
                "name": "c",
                "category": "rl",
                "expect": "pass",
                "as_expected": True,
                "key_metric": None,
                "verdict": {"outcome": "pass", "diagnosis": None, "message": ""},
            },
        ],
    }
    (tmp_path / "report.json").write_text("{}")
    m = summary.machine(data, tmp_path)
    assert m["counts"] == {"pass": 1, "fail": 1, "inconclusive": 0, "unresolved": 0}
    assert (m["as_expected"], m["not_as_expected"]) == (1, 1)
    assert list(m["files"]) == ["report.json"]
    md = summary.markdown(data, tmp_path)
    assert "exit 1, 1/2 as expected" in md and "a\\|b" in md and "\\|dlogp\\| 0.26" in md
    target = tmp_path / "summary.md"
    assert summary.append_step_summary(str(target), "x") is None
    assert summary.append_step_summary(str(target), "y") is None
    assert target.read_text() == "x\ny\n"
    assert "cannot append" in summary.append_step_summary(str(tmp_path), "z")


SCENARIO = """name = "served"
category = "logprobs"
[prompts]
items = ["What is 2 + 3?", "What is 7 + 5?"]
[sampling]
temperature = 0.7
top_p = 0.9
max_tokens = 4
seed = 1
[candidate]
engine = "openai"
url = "{url}"
"""


def test_json_junit_and_step_summary_end_to_end(tmp_path, tiny_model, monkeypatch):
    """Against a fake server (no vLLM): stdout is exactly the JSON summary, the junit file and
    the step summary are written, log lines are not wrapped at 80 columns."""
    step = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    with FakeServer() as server:
        sc = tmp_path / "served.toml"
        sc.write_text(SCENARIO.format(url=server.url))
        out, junit = tmp_path / "out", tmp_path / "ci-junit.xml"
        result = run_cli(
            [
                "check",
                str(sc),
                "--model",
                "tiny",
                "--output",
                str(out),
                "--json",
                "--junit",
                str(junit),
                "--max-tokens",
                "3",
            ]
        )
    summary_data = json.loads(result.stdout)  # nothing else on stdout
    assert summary_data["exit_code"] == result.exit_code
    assert summary_data["scenarios"][0]["name"] == "served"
    assert summary_data["files"]["report.json"] == str(out / "report.json")
    assert "<testsuite" in junit.read_text()
    assert "### parity check" in step.read_text() and "served" in step.read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["scenarios"][0]["sampling"]["max_tokens"] == 3
    assert report["scenarios"][0]["provenance"]["max_tokens"] == "cli"
    long_lines = [ln for ln in result.stderr.splitlines() if len(ln) > 80]
    assert long_lines, "some log line is longer than 80 columns and kept whole"
    assert "parity check" in result.stderr  # the table went to stderr with --json


def test_progress_lines_without_a_terminal():
    from io import StringIO

    from rich.console import Console

    from parity.run.progress import Display

    buf = StringIO()
    with Display(Console(file=buf, width=4096, soft_wrap=True), live=False, every_s=0.0) as display:
        display.log("[engine 1/1] starting v1-parity on tiny")
        display.progress(
            {"scenario": "s", "role": "candidate", "done": 0, "total": 4, "elapsed_s": 0.0}
        )
        display.progress(
            {
                "scenario": "s",
                "role": "candidate",
                "done": 2,
                "total": 4,
                "elapsed_s": 1.5,
                "out_tok_s": 12.25,
            }
        )
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[engine 1/1] starting v1-parity on tiny"
    assert "s [candidate]: 2/4 requests, 2s, 12.2 tok/s" in lines[-1]


@pytest.mark.parametrize("live", [True])
def test_live_display_runs_without_a_terminal_error(live):
    from io import StringIO

    from rich.console import Console

    from parity.run.progress import Display

    with Display(Console(file=StringIO(), force_terminal=True), live=live) as display:
        display.log("phase")
        display.progress({"scenario": "s", "role": "candidate", "done": 1, "total": 2})
        display.progress({"scenario": "s", "role": "candidate", "done": 2, "total": 2})


def test_dry_run_starts_no_engine(tmp_path, tiny_model, monkeypatch):
    """--dry-run on an in-process and a served scenario: the plan is printed, no engine is
    created (in process or served), no request is sent, no report written."""
    import parity.engines as engines

    def no_engine(*a, **k):
        raise AssertionError("a dry run created an engine")

    monkeypatch.setattr(engines, "create", no_engine)
    monkeypatch.chdir(tmp_path)
    with FakeServer() as server:
        sc = tmp_path / "served.toml"
        sc.write_text(SCENARIO.format(url=server.url))
        result = run_cli(
            [
                "check",
                str(sc),
                str(SCENARIOS / "logprobs-processed.toml"),
                "--model",
                "tiny",
                "--dry-run",
                "--prompts",
                "4",
            ]
        )
        assert not server.bodies
    assert result.exit_code == 0, result.output
    assert "2 engine(s) would start; nothing started" in result.output
    assert "scenario logprobs-processed (logprobs): 4 prompts" in result.output
    assert f"served {server.url}" in result.output and not (tmp_path / "results").exists()
