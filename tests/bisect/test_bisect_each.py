"""`parity bisect --each`: per-scenario ddmin searches run in lockstep, sharing trials."""

import json

import pytest

from parity.bisect import each as bisect_each
from parity.bisect.ddmin import Outcome, ddmin
from parity.bisect.each import lockstep
from parity.bisect.search import parse_setting

ITEMS = list("abcde")


def fails_with(culprit):
    return lambda config: Outcome.FAIL if culprit in config else Outcome.PASS


def test_lockstep_gives_each_search_its_own_answer_and_shares_configs():
    batches = []

    def run_batch(batch):
        batches.append(batch)
        return {name: fails_with(name)(config) for name, config in batch.items()}

    searches = {c: (lambda test: ddmin(ITEMS, test)) for c in "cde"}
    found = lockstep(searches, run_batch)
    alone = {c: ddmin(ITEMS, fails_with(c)) for c in "cde"}
    assert {c: r.minimal for c, r in found.items()} == {c: (c,) for c in "cde"}
    assert {c: r.trials for c, r in found.items()} == {c: r.trials for c, r in alone.items()}
    distinct = sum(len(set(b.values())) for b in batches)
    assert distinct < sum(r.n_tests for r in alone.values())  # shared configurations
    assert all(len(b) <= 3 for b in batches)


def test_lockstep_propagates_errors_and_stops_the_other_searches():
    def boom(test):
        test(frozenset())
        raise ValueError("search bug")

    def steady(test):
        for _ in range(100):
            test(frozenset("a"))

    with pytest.raises(ValueError, match="search bug"):
        lockstep({"x": boom, "y": steady}, lambda b: {n: Outcome.PASS for n in b})

    def interrupted(batch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lockstep({"y": steady}, interrupted)
    assert lockstep({}, interrupted) == {}


def test_bisect_each_finds_each_scenarios_culprit_with_shared_engine_starts(monkeypatch, tmp_path):
    good, bad = parse_setting("v1-parity"), parse_setting("v1-defaults")
    culprit = {
        "s-logprobs": "engine_args.logprobs_mode",
        "s-head": "engine_args.hf_overrides.head_dtype",
        "s-same": None,
    }
    runs = []

    def fake_trial(scenarios, names, good_, items, config, out_dir, n, log):
        runs.append((n, tuple(names)))
        applied = {k for k, _ in config}
        verdicts = {name: "fail" if culprit[name] in applied else "pass" for name in names}
        return {
            "verdicts": verdicts,
            "key_metric": {},
            "dir": str(out_dir / f"trial-{n}"),
            "engine_starts": 1,
        }

    monkeypatch.setattr(bisect_each, "trial", fake_trial)
    monkeypatch.setattr(bisect_each, "check_settings", lambda *a, **k: None)

    class Sc:
        def __init__(self, name):
            self.name = name

    each = bisect_each.bisect_each([Sc(n) for n in culprit], good, bad, tmp_path, log=print)
    by = {r.scenarios[0]: r for r in each.reports}
    assert [c["item"] for c in by["s-logprobs"].culprits] == ["engine_args.logprobs_mode"]
    assert [c["item"] for c in by["s-head"].culprits] == ["engine_args.hf_overrides.head_dtype"]
    assert by["s-head"].culprits[0]["fix"] == 'hf_overrides={"head_dtype": "float32"}'
    assert by["s-same"].status == "bad_does_not_fail"
    assert runs[:2] == [(1, tuple(culprit)), (2, tuple(culprit))]  # good, bad: once for all
    alone = sum(r.result.n_tests for r in (by["s-logprobs"], by["s-head"]))
    assert each.engine_starts == len(runs) < alone  # the confirmations and a split shared
    data = bisect_each.write(each, tmp_path)
    assert data["status"] == "found" and len(data["each"]) == 3
    assert json.loads((tmp_path / "bisect.json").read_text())["engine_starts"] == len(runs)
    assert "## s-head: found" in (tmp_path / "bisect.md").read_text()
