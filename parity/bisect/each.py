"""`parity bisect --each`: every scenario bisected on its own (its own ddmin, its own culprits),
with the trials run in lockstep so that a setting several searches need starts one engine.

Scenarios that diverge for different reasons (logprob semantics here, the lm_head there) each
get their own culprit, where one joint search would name only the first cause it isolates. The
searches run in threads; each trial request blocks until every live search has asked for its
next configuration, then the distinct configurations run, one runner.run each (one engine
start per setting), the scenarios that asked for it judged together."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable

from parity.bisect.ddmin import Outcome, ddmin
from parity.bisect.search import (
    BisectReport,
    _trial_row,
    check_settings,
    combined,
    finish,
    markdown,
    setting_items,
    to_data,
    trial,
)
from parity.engines.base import EngineSetting
from parity.run.scenario import Scenario

Log = Callable[[str], None]


class _Aborted(Exception):
    """The coordinator stopped (Ctrl-C, or a search failed): every waiting search ends."""


def lockstep(
    searches: dict[str, Callable[[Callable[[Hashable], Any]], Any]],
    run_batch: Callable[[dict[str, Hashable]], dict[str, Any]],
) -> dict[str, Any]:
    """Run searches that each call `test(config)` one at a time, batching their calls: once
    every live search waits on a test, run_batch({name: config}) answers them all at once.
    Returns each search's result; an exception in a search or in run_batch propagates (the
    other searches are stopped)."""
    cond = threading.Condition()
    pending: dict[str, Hashable] = {}
    answers: dict[str, Any] = {}
    live = set(searches)
    results: dict[str, Any] = {}
    errors: list[BaseException] = []
    state = {"aborted": False}

    def test_for(name: str) -> Callable[[Hashable], Any]:
        def test(config):
            with cond:
                pending[name] = config
                cond.notify_all()
                while name not in answers and not state["aborted"]:
                    cond.wait()
                if state["aborted"]:
                    raise _Aborted()
                return answers.pop(name)

        return test

    def worker(name: str) -> None:
        try:
            results[name] = searches[name](test_for(name))
        except _Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
            errors.append(exc)
        finally:
            with cond:
                live.discard(name)
                cond.notify_all()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in searches]
    for t in threads:
        t.start()
    try:
        while True:
            with cond:
                while live and (errors or len(pending) < len(live)):
                    if errors:
                        raise errors[0]
                    cond.wait()
                if errors:
                    raise errors[0]
                if not live:
                    break
                batch = dict(pending)
                pending.clear()
            answered = run_batch(batch)
            with cond:
                answers.update(answered)
                cond.notify_all()
    finally:
        with cond:
            state["aborted"] = True
            cond.notify_all()
        for t in threads:
            t.join(timeout=5)
    return results


@dataclass
class EachReport:
    """Per-scenario bisections run together: one BisectReport per scenario (its `engine_starts`
    counts every start its trials used, shared ones too), and the run's own totals."""

    reports: list[BisectReport] = field(default_factory=list)
    engine_starts: int = 0
    n_trials: int = 0  # runner runs: one per distinct configuration asked in a step
    wall_s: float = 0.0


def bisect_each(
    scenarios: list[Scenario],
    good: EngineSetting,
    bad: EngineSetting,
    out_dir: Path,
    repeats: int = 1,
    log: Log = print,
) -> EachReport:
    """Confirm good and bad on every scenario (two runs), then one ddmin per scenario where
    good passes and bad fails, in lockstep (lockstep()): a step's distinct configurations run
    once each, serving every search that asked for it."""
    t0 = time.perf_counter()
    check_settings(scenarios, {"--good": good, "--bad": bad}, out_dir / "logs", log)
    items = setting_items(good, bad)
    names = [s.name for s in scenarios]
    reports = {n: BisectReport(good, bad, items, [n]) for n in names}
    counter = {"n": 0, "starts": 0}

    def run_config(config: frozenset, who: list[str]) -> dict[str, tuple[Outcome, dict]]:
        counter["n"] += 1
        detail = trial(scenarios, who, good, items, config, out_dir, counter["n"], log)
        counter["starts"] += detail["engine_starts"]
        out = {}
        for name in who:
            outcome = combined({name: detail["verdicts"].get(name, "unresolved")})
            out[name] = (
                outcome,
                {
                    "verdicts": {name: detail["verdicts"].get(name)},
                    "key_metric": {name: detail["key_metric"].get(name)},
                    "dir": detail["dir"],
                    "trial": counter["n"],
                },
            )
            reports[name].engine_starts += detail["engine_starts"]
        log(f"           -> {detail['verdicts']}")
        return out

    first = run_config(frozenset(), names)  # good and bad, once for every scenario
    last = run_config(frozenset(items), names)
    relevant = [n for n in names if first[n][0] is Outcome.PASS and last[n][0] is Outcome.FAIL]
    for name in names:
        if name not in relevant:
            rep = reports[name]
            rep.status = (
                "unresolved"
                if Outcome.UNRESOLVED in (first[name][0], last[name][0])
                else "good_does_not_pass"
                if first[name][0] is not Outcome.PASS
                else "bad_does_not_fail"
            )
            rep.trials = [_trial_row(0, (), *first[name]), _trial_row(1, tuple(items), *last[name])]

    def search(name: str):
        memo = {frozenset(): first[name], frozenset(items): last[name]}
        calls: dict[frozenset, int] = {}

        def run(test):
            def cached_test(config: frozenset):
                n = calls.get(config, 0)
                calls[config] = n + 1
                return memo[config] if n == 0 and config in memo else test(config)

            return ddmin(items, cached_test, repeats=repeats)

        return run

    def run_batch(batch: dict[str, frozenset]) -> dict[str, tuple[Outcome, dict]]:
        by_config: dict[frozenset, list[str]] = {}
        for name, config in batch.items():
            by_config.setdefault(config, []).append(name)
        answers = {}
        for config, who in by_config.items():
            answers.update(run_config(config, who))
        return answers

    try:
        found = lockstep({n: search(n) for n in relevant}, run_batch)
    except KeyboardInterrupt:
        for name in relevant:
            reports[name].status = "interrupted"
        found = {}
    for name, result in found.items():
        finish(reports[name], result)
    wall = time.perf_counter() - t0
    for rep in reports.values():
        rep.wall_s = wall
    return EachReport(list(reports.values()), counter["starts"], counter["n"], wall)


def status(each: EachReport) -> str:
    """The run's status: "unresolved" when a search could not finish or got no verdict,
    "found" when every scenario good and bad differ on has its culprits (and one does), else
    "no_scenario_differs"."""
    states = [r.status for r in each.reports]
    if any(s in ("unresolved", "interrupted") for s in states):
        return "unresolved"
    return "found" if "found" in states else "no_scenario_differs"


def write(each: EachReport, out_dir: Path) -> dict[str, Any]:
    """bisect.json (one entry per scenario under "each", the run's totals) and bisect.md."""
    per = [to_data(r) for r in each.reports]
    data = {
        "status": status(each),
        "each": per,
        "engine_starts": each.engine_starts,
        "n_runs": each.n_trials,
        "wall_s": each.wall_s,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bisect.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    lines = [
        f"# parity bisect --each: {data['status']}",
        "",
        f"{len(per)} scenarios bisected each on its own, trials shared: "
        f"{each.n_trials} runs, {each.engine_starts} engine starts, {each.wall_s:.0f} s.",
        "",
    ]
    for rep, d in zip(each.reports, per):
        lines += [f"## {rep.scenarios[0]}: {rep.status}", "", *markdown(rep, d), ""]
    (out_dir / "bisect.md").write_text("\n".join(lines) + "\n")
    return data
