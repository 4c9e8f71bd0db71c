"""Suites: named lists of shipped scenarios (`parity check --suite quick`, `make demo`)."""

from pathlib import Path

from conftest import REPO, run_cli

from parity.run import selection
from parity.run.scenario import load_scenarios

SCEN = REPO / "scenarios"


def test_quick_suite_shows_the_four_fix_categories_each_with_a_control():
    files, problems = selection.suite_files("quick", SCEN)
    assert problems == []
    scenarios = load_scenarios(files)
    by_cat = {}
    for sc in scenarios:
        by_cat.setdefault(sc.category, []).append(sc)
    assert {"logprobs", "runtime", "lm_head", "weight_update"} <= set(by_cat)
    for cat in ("logprobs", "lm_head", "weight_update"):  # a pass and a control that must fail
        assert {sc.expect for sc in by_cat[cat]} == {"pass", "fail"}, cat
    # No V0 environment to build: every engine is the harness's vLLM.
    assert {s.env for sc in scenarios for s in sc.settings().values()} == {"harness"}
    assert len({s.key() for sc in scenarios for s in sc.settings().values()}) == 3


def test_unknown_suite_lists_the_known_ones(tmp_path):
    files, problems = selection.suite_files("nope", SCEN)
    assert files == []
    assert problems[0][:2] == ("--suite", "nope") and "quick" in problems[0][2]


def test_bad_suite_file_names_file_field_and_each_problem(tmp_path):
    (tmp_path / "suites").mkdir()
    (tmp_path / "a.toml").write_text("")
    bad = tmp_path / "suites" / "x.toml"
    bad.write_text('scenarios = ["a", "missing", "gone"]\nextra = 1\n')
    files, problems = selection.suite_files("x", tmp_path)
    assert files == [tmp_path / "a.toml"]
    assert [(p[1], p[2].split(":")[0]) for p in problems] == [
        ("scenarios", "'missing'"),
        ("scenarios", "'gone'"),
        ("extra", "unknown field; allowed"),
    ]
    assert all(p[0] == str(bad) for p in problems)
    bad.write_text("scenarios = 3\n")
    assert selection.suite_files(str(bad), tmp_path)[1][0][1] == "scenarios"
    bad.write_text("scenarios = [\n")
    assert selection.suite_files(str(bad), tmp_path)[1][0][1] == "(file)"


def test_cli_suite_errors_exit_2_and_dry_run_plans_three_engines(tiny_model, monkeypatch):
    monkeypatch.chdir(REPO)
    result = run_cli(["check", "--suite", "nope"])
    assert result.exit_code == 2 and "the suites are: quick" in result.output
    result = run_cli(["check", "--suite", "quick", "--model", "tiny", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "3 engine(s) would start" in result.output
    # Labels keep their brackets (rich would read "[dtype=...]" as markup and drop it).
    assert "v1-parity [dtype=float32, enable_prefix_caching=True" in result.output
    assert Path("scenarios/suites/quick.toml").is_file()
