"""parity.api: `parity.check` and `parity.judge` from Python, as the CLI calls them (fake engines
and category from tests/fakes/fault_fakes.py: no vLLM, seconds per test)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from fault_fakes import install_fakes, scenario, write_shim

import parity
from parity.run import scenario as scenario_module
from parity.run.scenario import ScenarioError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "bin").mkdir()
    install_fakes(monkeypatch.setattr, monkeypatch.setitem, write_shim(tmp_path / "bin"))
    return monkeypatch


def test_check_runs_writes_every_report_and_returns_the_run(fakes, tmp_path):
    fakes.setattr(
        scenario_module,
        "load_scenarios",
        lambda targets, overrides: [scenario("a"), replace(scenario("b"), expect="fail")],
    )
    lines = []
    run = parity.check(["ignored.toml"], output=tmp_path / "out", log=lines.append)
    assert isinstance(run, parity.RunResult)
    assert [r.verdict.outcome for r in run.results] == ["pass", "pass"]
    assert run.exit_code == 1 and run.out_dir == tmp_path / "out"  # b was expected to fail
    for name in ("report.json", "report.md", "junit.xml", "report.html", "tokens.parquet"):
        assert (run.out_dir / name).is_file(), name
    on_disk = json.loads((run.out_dir / "report.json").read_text())
    assert on_disk["exit_code"] == run.report["exit_code"] == 1
    assert "report_s" in on_disk["timings"] and any("[engine 1/1]" in x for x in lines)


def test_check_raises_every_input_problem_before_anything_starts(fakes, tmp_path):
    fakes.setattr(scenario_module, "load_scenarios", lambda targets, overrides: [scenario("a")])
    mine = [("--junit", "PATH", "give a file")]
    with pytest.raises(ScenarioError) as err:
        parity.check(
            export_sequences=tmp_path / "no-such-dir" / "seqs.parquet",
            prompts=0,
            problems=mine,
            output=tmp_path / "out",
        )
    fields = [p[:2] for p in err.value.problems]
    assert ("--export-sequences", "FILE") in fields and ("--junit", "PATH") in fields
    assert any(p[0] == "--prompts" for p in err.value.problems)
    assert not (tmp_path / "out").exists()


def test_judge_writes_its_reports_and_raises_on_bad_input(tmp_path):
    from parity.report import judge_report  # noqa: F401  (the reports judge writes)

    example = parity.judge(REPO / "examples" / "judge-example.parquet", output=tmp_path / "j")
    assert example.exit_code == 0 and (example.out_dir / "report.md").is_file()
    assert example.report["exit_code"] == 0
    with pytest.raises(ScenarioError) as err:
        parity.judge(tmp_path / "missing.parquet", tolerances=["nonsense=1"])
    assert len(err.value.problems) >= 1


def test_judge_records_the_trainer_and_refuses_an_unknown_one(tmp_path):
    example = parity.judge(
        REPO / "examples" / "judge-example.parquet", output=tmp_path / "j", trainer="verl"
    )
    assert example.report["trainer"] == {"name": "verl", "semantics": "tempered"}
    with pytest.raises(ScenarioError) as err:
        parity.judge(REPO / "examples" / "judge-example.parquet", trainer="verll")
    ((where, _, message),) = err.value.problems
    assert where == "--trainer" and "processed-replay" in message
