"""Exit codes and report files from run results (synthetic verdicts; real runs are in
test_engine_*)."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from parity.report import build as report_build
from parity.report import files as report_files
from parity.run.runner import RunResult, ScenarioResult
from parity.run.scenario import load_scenarios
from parity.verdicts import power, stats
from parity.verdicts.core import Finding, Verdict

SHIPPED = Path(__file__).resolve().parents[2] / "scenarios"


def results(*outcomes):
    scenarios = {s.name: s for s in load_scenarios([SHIPPED])}
    out = []
    for name, outcome, diagnosis in outcomes:
        res = ScenarioResult(scenarios[name])
        res.verdict = Verdict(
            outcome,
            diagnosis,
            f"{outcome} message",
            [
                Finding(
                    "abs_dlogp_seqmean", "bound", "pass" if outcome == "pass" else "fail", 0.1, 0.06
                )
            ],
        )
        out.append(res)
    return RunResult("test", out, timings={"total_s": 1.0})


def test_exit_codes():
    ok = ("logprobs-processed", "pass", None)
    control_ok = ("logprobs-raw-control", "fail", "raw_logprobs")
    assert report_build.exit_code(results(ok, control_ok)) == 0
    assert report_build.exit_code(results(("logprobs-processed", "fail", "x"), control_ok)) == 1
    # A negative control that passes means the check could not fail: a divergence.
    assert report_build.exit_code(results(ok, ("logprobs-raw-control", "pass", None))) == 1
    # ... and one that fails for another reason is not the control working either.
    assert report_build.exit_code(results(ok, ("logprobs-raw-control", "fail", "other"))) == 1
    assert (
        report_build.exit_code(
            results(("logprobs-processed", "unresolved", "engine_failed"), control_ok)
        )
        == 125
    )
    assert report_build.exit_code(results(("logprobs-processed", "inconclusive", None))) == 125
    # A measurement of the hardware (expect = "report") accepts a failure within its outer
    # bound ([report_within] abs_dlogp_seqmean = 0.06), not one beyond it.
    measured = ("runtime-batch-invariance", "fail", "batch_variance")
    run = results(ok, control_ok, measured)
    run.results[2].verdict.findings[0].value = 0.027  # the AVX512-BF16 figure
    assert report_build.exit_code(run) == 0
    run.results[2].verdict.findings[0].value = 0.1  # a batching bug
    assert report_build.exit_code(run) == 1
    run.results[2].verdict.findings[0].value = 0.027
    run.results[2].verdict.findings.append(Finding("engine_neginf", "count_limit", "fail", 1, 0))
    assert report_build.exit_code(run) == 1  # no outer bound: never accepted
    assert (
        report_build.exit_code(
            results(ok, control_ok, ("runtime-batch-invariance", "unresolved", "engine_failed"))
        )
        == 125
    )


def test_files_written(tmp_path):
    run = results(
        ("logprobs-processed", "fail", "x"), ("logprobs-raw-control", "fail", "raw_logprobs")
    )
    data = report_files.write(run, tmp_path, report_build.exit_code(run))
    assert json.loads((tmp_path / "report.json").read_text())["exit_code"] == 1
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert "logprobs-processed" in (tmp_path / "report.md").read_text()
    assert data["provenance"]["python"]


def test_report_json_carries_each_scenario_power(tmp_path):
    # An rl scenario's equivalence finding (a paired interval): report.json has its power at no
    # difference and the units for the target; a scenario with bounds only has none.
    run = results(("rl-v0-vs-v1-parity", "pass", None), ("logprobs-processed", "pass", None))
    base = [0.1 * (i % 7) for i in range(96)]
    cand = [b + 0.01 * ((i * 3) % 5 - 2) for i, b in enumerate(base)]
    test = stats.equivalence_tost(base, cand, 0.2, paired=True)
    run.results[0].verdict.findings.append(
        Finding("entropy", "equivalence", test.outcome, test.estimate, 0.2, test.to_dict())
    )
    report_files.write(run, tmp_path, report_build.exit_code(run))
    data = json.loads((tmp_path / "report.json").read_text())
    rl, lp = data["scenarios"]
    p = rl["power"]["entropy"]
    assert set(p) >= {"kind", "power", "units", "units_needed", "margin", "unit", "target"}
    assert p["kind"] == "equivalence" and p["units"] == 96 and p["target"] == power.TARGET
    assert lp["power"] == {}
    assert "<h3>Power</h3>" in (tmp_path / "report.html").read_text()
