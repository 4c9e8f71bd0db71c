"""`parity bisect`: the smallest set of setting differences that makes a good engine setting go
bad, found by delta debugging (ddmin.py) over real engine runs of the chosen scenarios."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from parity import categories
from parity.bisect.ddmin import BisectResult, Outcome, ddmin
from parity.engines import settings
from parity.engines.base import EngineSetting
from parity.report.build import verdict_of
from parity.run import preflight, runner
from parity.run.preflight import Check
from parity.run.scenario import Scenario, ScenarioError
from parity.setup import envs, models

REMOVED = "<unset>"  # the bad setting does not set this item: the engine's default applies

# Known culprits: (category, fix) per item name, for the bisect report.
KNOWN_FIXES = {
    "engine_args.logprobs_mode": ("logprob semantics", "logprobs_mode=processed_logprobs"),
    "engine_args.enable_prefix_caching": (
        "runtime defaults / weight updates",
        "enable_prefix_caching=False (or reset the prefix cache after every weight update)",
    ),
    "engine_args.async_scheduling": ("runtime defaults", "async_scheduling=False"),
    "engine_args.disable_cascade_attn": ("runtime defaults", "disable_cascade_attn=True"),
    "engine_args.hf_overrides.head_dtype": (
        "fp32 lm_head",
        'hf_overrides={"head_dtype": "float32"}',
    ),
    "env_vars.PARITY_FP32_HEAD": ("fp32 lm_head", "PARITY_FP32_HEAD=1 (parity's V0 head patch)"),
    "env": ("engine version", "pin the engine environment that passes"),
}


def parse_setting(text: str, where: str = "--good/--bad") -> EngineSetting:
    """A setting string (see parity.engines.settings.parse_setting); ScenarioError with every problem."""
    setting, problems = settings.parse_setting(text, where)
    if problems:
        raise ScenarioError(problems)
    return setting


def check_settings(
    scenarios: list[Scenario],
    named: dict[str, EngineSetting],
    log_dir: Path,
    log: Callable[[str], None],
) -> None:
    """The good and bad settings' engine args, judged by the vLLM of their environments on
    every model of the scenarios before trial 1; ScenarioError naming the option otherwise."""

    paths = sorted({str(models.resolve_model(sc.model, log=log)) for sc in scenarios})
    pythons = {s.env: envs.python_for(s.env, log) for s in named.values()}
    problems = preflight.engine_problems(
        [
            Check(where, "engine_args", setting, model)
            for where, setting in named.items()
            for model in paths
        ],
        pythons,
        log_dir,
    )
    if problems:
        raise ScenarioError(problems)


def _flatten(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(f"{prefix}{k}.", v))
        else:
            out[f"{prefix}{k}"] = v
    return out


def setting_items(good: EngineSetting, bad: EngineSetting) -> list[tuple[str, Any]]:
    """The differences between two settings, as (name, bad value) items in a stable order."""
    g = {
        **_flatten("engine_args.", good.args),
        **_flatten("env_vars.", good.variables),
        "env": good.env,
    }
    b = {
        **_flatten("engine_args.", bad.args),
        **_flatten("env_vars.", bad.variables),
        "env": bad.env,
    }
    items = []
    for name in sorted(set(g) | set(b)):
        gv, bv = g.get(name, REMOVED), b.get(name, REMOVED)
        if json.dumps(gv, sort_keys=True) != json.dumps(bv, sort_keys=True):
            items.append((name, bv if not isinstance(bv, (list, dict)) else json.dumps(bv)))
    return items


def apply_items(good: EngineSetting, items) -> EngineSetting:
    """The good setting with the given (name, value) items applied."""
    args = json.loads(json.dumps(good.args))
    env_vars = dict(good.variables)
    env = good.env
    for name, value in items:
        if name == "env":
            env = value
            continue
        section, *path = name.split(".")
        target = args if section == "engine_args" else env_vars
        for p in path[:-1]:
            target = target.setdefault(p, {})
        if value == REMOVED:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    args = {k: v for k, v in args.items() if v != {}}
    return EngineSetting.make(good.engine, env, args, env_vars, profile=good.profile)


@dataclass
class BisectReport:
    good: EngineSetting
    bad: EngineSetting
    items: list[tuple[str, Any]]
    scenarios: list[str]
    result: BisectResult | None = None
    status: str = ""
    engine_starts: int = 0
    wall_s: float = 0.0
    trials: list[dict[str, Any]] = field(default_factory=list)
    culprits: list[dict[str, Any]] = field(default_factory=list)


def bisect(
    scenarios: list[Scenario],
    good: EngineSetting,
    bad: EngineSetting,
    out_dir: Path,
    repeats: int = 1,
    log: Callable[[str], None] = print,
) -> BisectReport:
    """Confirm good passes and bad fails, keep only the scenarios they differ on, then ddmin
    over the setting differences. Each trial runs the relevant scenarios with the candidate
    replaced by the trial's setting (reference scores come from the shared on-disk cache)."""
    t0 = time.perf_counter()
    check_settings(scenarios, {"--good": good, "--bad": bad}, out_dir / "logs", log)
    items = setting_items(good, bad)
    report = BisectReport(good, bad, items, [s.name for s in scenarios])
    memo: dict[frozenset, tuple[Outcome, dict[str, Any]]] = {}
    counter = {"n": 0}
    finished: list[dict[str, Any]] = []  # trial rows so far, reported if interrupted

    def run_trial(config: frozenset, names: list[str]) -> tuple[Outcome, dict[str, Any]]:
        counter["n"] += 1
        detail = trial(scenarios, names, good, items, config, out_dir, counter["n"], log)
        report.engine_starts += detail.pop("engine_starts")
        outcome = combined(detail["verdicts"])
        log(f"           -> {outcome.value} {detail['verdicts']}")
        if "error" not in detail:
            finished.append(_trial_row(counter["n"], tuple(sorted(config)), outcome, detail))
        return outcome, detail

    # Which scenarios do good and bad actually differ on?
    names = [s.name for s in scenarios]
    try:
        g_out, g_detail = run_trial(frozenset(), names)
        b_out, b_detail = run_trial(frozenset(items), names)
    except KeyboardInterrupt:
        return _interrupted(report, finished, t0)
    relevant = [
        n
        for n in names
        if g_detail["verdicts"].get(n) == "pass" and b_detail["verdicts"].get(n) == "fail"
    ]
    report.scenarios = relevant
    if not relevant:
        report.status = "good_does_not_pass" if g_out != Outcome.PASS else "bad_does_not_fail"
        report.trials = [
            _trial_row(0, (), g_out, g_detail),
            _trial_row(1, tuple(items), b_out, b_detail),
        ]
        report.wall_s = time.perf_counter() - t0
        return report
    if relevant != names:
        # Re-key the confirmation outcomes on the relevant scenarios only.
        g_out = Outcome.PASS
        b_out = Outcome.FAIL
    memo[frozenset()] = (g_out, g_detail)
    memo[frozenset(items)] = (b_out, b_detail)

    calls: dict[frozenset, int] = {}

    def test(config: frozenset):
        # ddmin calls this `repeats` times per configuration and caches the combined outcome;
        # the confirmation runs above serve as the first call for good and bad.
        n = calls.get(config, 0)
        calls[config] = n + 1
        if n == 0 and config in memo:
            return memo[config]
        return run_trial(config, relevant)

    try:
        result = ddmin(items, test, repeats=repeats)
    except KeyboardInterrupt:
        return _interrupted(report, finished, t0)
    finish(report, result)
    report.wall_s = time.perf_counter() - t0
    return report


def finish(report: BisectReport, result: BisectResult) -> None:
    """The report of a finished ddmin: status, trial rows, culprits with category and fix."""
    report.result, report.status = result, result.status
    report.trials = [
        _trial_row(t.index, t.items, t.outcome, t.detail, t.cached) for t in result.trials
    ]
    for name, value in result.minimal:
        category, fix = KNOWN_FIXES.get(
            name, KNOWN_FIXES.get(name.rsplit(".", 1)[0], ("unknown", "see the trial reports"))
        )
        report.culprits.append(
            {
                "item": name,
                "bad_value": value,
                "good_value": _value_in(report.good, name),
                "category": category,
                "fix": fix,
            }
        )


def trial(
    scenarios: list[Scenario],
    names: list[str],
    good: EngineSetting,
    items: list,
    config: frozenset,
    out_dir: Path,
    n: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Trial n: the named scenarios with their candidate replaced by good + the items in
    `config`, one runner.run (one engine start per distinct setting) in out_dir/trial-NN:
    {"verdicts", "key_metric", "dir", "engine_starts"} ("error" when vLLM refuses the mix).

    Raises:
        KeyboardInterrupt: Ctrl-C/SIGTERM during the run ends the bisection.
    """

    setting = apply_items(good, [i for i in items if i in config])
    trial_dir = out_dir / f"trial-{n:02d}"
    chosen = [replace(s, candidate=setting) for s in scenarios if s.name in names]
    log(
        f"[trial {n}] {len(config)} item(s): "
        + (", ".join(f"{k}={v}" for k, v in items if (k, v) in config) or "(good)")
        + (f" on {', '.join(names)}" if len(names) < len(scenarios) else "")
    )
    try:  # the confirmation runs (good, bad) check everything in the engines' envs; the
        # mixes after them only start engines (a mix vLLM refuses fails at its start)
        run = runner.run(chosen, trial_dir, log=lambda m: None, preflight=n <= 2)
    except ScenarioError as exc:  # a mix of good and bad values the engine refuses
        log(f"           -> unresolved: the engine refuses this mix: {exc}")
        return {
            "verdicts": {name: "unresolved" for name in names},
            "key_metric": {},
            "dir": str(trial_dir),
            "error": str(exc),
            "engine_starts": 0,
        }
    if run.interrupted and not run.interrupted.startswith("internal error"):
        raise KeyboardInterrupt(run.interrupted)
    return {
        "verdicts": {r.scenario.name: verdict_of(r, run.interrupted).outcome for r in run.results},
        "key_metric": {r.scenario.name: _key_metric(r) for r in run.results},
        "dir": str(trial_dir),
        "engine_starts": sum(1 for e in run.engines if "start_s" in e or "error" in e),
    }


def combined(verdicts: dict[str, str]) -> Outcome:
    """A trial's outcome over its scenarios: unresolved if any had no verdict, else fail if any
    failed, else pass."""
    if any(o in ("unresolved", "inconclusive") for o in verdicts.values()):
        return Outcome.UNRESOLVED
    return Outcome.FAIL if "fail" in verdicts.values() else Outcome.PASS


def _interrupted(
    report: BisectReport,
    finished: list[dict[str, Any]],
    t0: float,
) -> BisectReport:
    """A bisection stopped by Ctrl-C/SIGTERM: the trials that finished, status "interrupted"."""
    report.status, report.trials = "interrupted", finished
    report.wall_s = time.perf_counter() - t0
    return report


def _value_in(setting: EngineSetting, name: str) -> Any:
    g = {
        **_flatten("engine_args.", setting.args),
        **_flatten("env_vars.", setting.variables),
        "env": setting.env,
    }
    return g.get(name, REMOVED)


def _key_metric(res) -> Any:
    """The category's key metric as a number where it has one, else its headline."""

    value, text = categories.get(res.scenario.category).key_metric(res.detail or {})
    if value is not None and value == value:
        return round(float(value), 5)
    return None if text in (None, "n/a") else text


def _trial_row(index, items, outcome, detail, cached=False) -> dict[str, Any]:
    return {
        "index": index,
        "items": [f"{k}={v}" for k, v in items],
        "outcome": outcome.value,
        "cached": cached,
        "verdicts": (detail or {}).get("verdicts"),
        "key_metric": (detail or {}).get("key_metric"),
    }


def write(report: BisectReport, out_dir: Path) -> dict[str, Any]:
    """bisect.json and bisect.md in out_dir."""
    data = to_data(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bisect.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out_dir / "bisect.md").write_text(
        "\n".join([f"# parity bisect: {report.status}", "", *markdown(report, data)]) + "\n"
    )
    return data


def to_data(report: BisectReport) -> dict[str, Any]:
    """bisect.json's fields for one bisection."""
    return {
        "status": report.status,
        "good": report.good.to_dict(),
        "bad": report.bad.to_dict(),
        "items": [f"{k}={v}" for k, v in report.items],
        "scenarios": report.scenarios,
        "culprits": report.culprits,
        "trials": report.trials,
        "n_trials": len(report.trials),
        "n_tests": report.result.n_tests if report.result else len(report.trials),
        "engine_starts": report.engine_starts,
        "wall_s": report.wall_s,
    }


def markdown(report: BisectReport, data: dict[str, Any]) -> list[str]:
    """bisect.md's lines for one bisection, after its heading."""
    lines = [
        f"good `{report.good.label()}`, bad `{report.bad.label()}`; scenarios "
        f"{', '.join(report.scenarios) or '(none differ)'}.",
        "",
        f"{data['n_trials']} trials ({data['n_tests']} run, the rest cached), "
        f"{report.engine_starts} engine starts, {report.wall_s:.0f} s.",
        "",
    ]
    if report.culprits:
        lines += ["| culprit | good | bad | category | fix |", "|---|---|---|---|---|"]
        lines += [
            f"| {c['item']} | {c['good_value']} | {c['bad_value']} | {c['category']} | {c['fix']} |"
            for c in report.culprits
        ]
        lines.append("")
    lines += [
        "| trial | items applied to good | outcome | cached | key metric |",
        "|---|---|---|---|---|",
    ]
    for t in report.trials:
        lines.append(
            f"| {t['index']} | {', '.join(t['items']) or '(good)'} | {t['outcome']} | "
            f"{t['cached']} | {t['key_metric']} |"
        )
    return lines
