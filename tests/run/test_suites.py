"""Suites: named lists of shipped scenarios (`parity check --suite quick`, `make demo`)."""

from pathlib import Path

from conftest import REPO, run_cli

from parity.run import engineplan, selection
from parity.run.prompts import load_prompts
from parity.run.results import ScenarioResult
from parity.run.scenario import load_scenarios

SCEN = REPO / "scenarios"


def _quick() -> list:
    files, problems = selection.suite_files("quick", SCEN)
    assert problems == []
    return load_scenarios(files)


def test_quick_suite_is_the_mission_then_the_four_fixes_each_with_a_control():
    scenarios = _quick()
    # V0 0.8.5 against V1: with the V0-parity settings (pass), with its defaults (fail).
    pair = [(sc.name, sc.expect, sc.baseline.env, sc.candidate.profile) for sc in scenarios[:2]]
    assert pair == [
        ("rl-v0-vs-v1-parity", "pass", "v0", "v1-parity"),
        ("rl-v0-vs-v1-defaults", "fail", "v0", "v1-defaults"),
    ]
    # Then the write-up's order (docs/methodology.md): logprob semantics, runtime defaults,
    # weight updates, fp32 lm_head; a pass and a control that must fail where there is one.
    cats = [sc.category for sc in scenarios[2:]]
    assert cats == sorted(cats, key=["logprobs", "runtime", "weight_update", "lm_head"].index)
    for cat in ("logprobs", "lm_head", "weight_update"):
        assert {sc.expect for sc in scenarios if sc.category == cat} == {"pass", "fail"}, cat
    assert len({s.key() for sc in scenarios for s in sc.settings().values()}) == 4


def test_quick_suite_generates_what_its_scenarios_share_once():
    """The logprobs scenarios ask V1-parity and V1 defaults what the rl pair asks them, and
    V0 answers both rl scenarios from one generation (the engines' MemoEngine)."""
    results = []
    for sc in _quick():
        res = ScenarioResult(sc)
        res.prompts = load_prompts(sc.prompt_source, sc.prompt_items, sc.prompt_seed)
        results.append(res)
    shared = {
        jobs[0][0].scenario.settings()[jobs[0][1]].label(): engineplan.shared_generations(jobs)
        for jobs in engineplan.plan_engines(results).values()
    }
    assert shared["v0"] == [["rl-v0-vs-v1-parity", "rl-v0-vs-v1-defaults"]]
    assert shared["v1-parity"] == [["rl-v0-vs-v1-parity", "logprobs-processed"]]
    assert shared["v1-defaults"] == [["rl-v0-vs-v1-defaults", "logprobs-raw-control"]]
    # Probes that repeat a request on purpose or fill a cache before an update share nothing.
    assert [v for k, v in shared.items() if k.startswith("v1-parity [")] == [[]]


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


def test_cli_suite_errors_exit_2_and_dry_run_plans_the_engines(tiny_model, monkeypatch):
    monkeypatch.chdir(REPO)
    result = run_cli(["check", "--suite", "quick", "--dry-run", "--category", "nope"])
    assert result.exit_code == 2 and "nope" in result.output
    result = run_cli(["check", "--suite", "nope"])
    assert result.exit_code == 2 and "the suites are: quick" in result.output
    # The harness's engines only (V0's environment is the engine tests' to build).
    pick = ["--category", "logprobs", "--category", "weight_update", "--category", "lm_head"]
    result = run_cli(["check", "--suite", "quick", "--model", "tiny", "--dry-run", *pick])
    assert result.exit_code == 0, result.output
    assert "3 engine(s) would start" in result.output
    assert "generated once, shared" not in result.output  # nothing shares without the rl pair
    # Labels keep their brackets (rich would read "[dtype=...]" as markup and drop it).
    assert "v1-parity [dtype=float32, enable_prefix_caching=True" in result.output
    assert Path("scenarios/suites/quick.toml").is_file()
