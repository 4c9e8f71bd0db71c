"""Runs scenarios: starts each distinct engine setting once, generates every scenario's samples
on it, scores them with the reference (batched, cached), and judges each scenario."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from parity.checks import Verdict, check_logprobs, check_rl, expected
from parity.direct import semantics_specs, summarize, teacher_force
from parity.engines.base import EngineError, EngineSetting, Sequence
from parity.prompts import REWARDS, Prompt, load_prompts, render
from parity.scenario import Scenario, ScenarioError

Log = Callable[[str], None]

# Categories whose engine work is more than one generate call (weight updates, probes) live in
# their own module, imported lazily, exposing:
#   drive(engine, res: ScenarioResult, role: str, prompts: list[list[int]], log) -> None
#       does the engine work and fills res.runs[role] (sequences, extra);
#   judge(res: ScenarioResult, refs: References) -> (Verdict, detail).
PLUGINS: dict[str, str] = {"runtime": "parity.runtime", "lm_head": "parity.lm_head",
                           "weight_update": "parity.updates"}


def plugin(category: str):
    import importlib

    return importlib.import_module(PLUGINS[category]) if category in PLUGINS else None


class References:
    """Reference models shared by a run: one per (checkpoint, head dtype), loaded on first use,
    all writing to one score cache."""

    def __init__(self, log: Log):
        from parity.reference import ScoreCache

        self.cache = ScoreCache()
        self.log = log
        self._refs: dict[tuple[str, str], Any] = {}

    def get(self, model_path: str, head_dtype: str):
        from parity.models import fingerprint
        from parity.reference import Reference

        key = (str(model_path), head_dtype)
        if key not in self._refs:
            self.log(f"[reference] HF transformers on {Path(model_path).name} "
                     f"({head_dtype} lm_head)")
            self._refs[key] = Reference(model_path, head_dtype, model_fp=fingerprint(model_path),
                                        cache=self.cache)
        return self._refs[key]

    def stats(self) -> dict[str, dict]:
        return {f"{Path(m).name}:{h}": dict(r.stats) for (m, h), r in self._refs.items()}

    def close(self) -> None:
        for ref in self._refs.values():
            ref.close()
        self.cache.close()


@dataclass
class EngineRun:
    """One engine role (candidate or baseline) of one scenario."""

    role: str
    setting: EngineSetting
    sequences: list[Sequence] = field(default_factory=list)
    effective_config: dict[str, Any] | None = None
    start_s: float | None = None
    generate_s: float | None = None
    error: str | None = None
    log_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # category-specific engine data
    reused: bool = False  # sequences taken from an earlier identical request on this engine


@dataclass
class ScenarioResult:
    scenario: Scenario
    model_path: str = ""
    prompts: list[Prompt] = field(default_factory=list)
    runs: dict[str, EngineRun] = field(default_factory=dict)
    verdict: Verdict | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    score_s: float = 0.0
    check_s: float = 0.0

    @property
    def as_expected(self) -> bool:
        return self.verdict is not None and expected(self.verdict, self.scenario.expect,
                                                     self.scenario.expect_diagnosis)


@dataclass
class RunResult:
    run_id: str
    results: list[ScenarioResult]
    timings: dict[str, float] = field(default_factory=dict)
    engines: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    interrupted: str | None = None
    reference_stats: dict[str, dict] = field(default_factory=dict)


def python_for(env_name: str, log: Log) -> str:
    """The interpreter of an engine environment ("harness" = this one), built if missing."""
    if env_name == "harness":
        return sys.executable
    from parity import envs

    return str(envs.ensure_env(envs.get_spec(env_name), log=log))


_ENGINE_FIELDS: dict[str, tuple[set[str], str]] = {}


def _validate_engine_args(scenarios: list[Scenario], pythons: dict[str, str], log_dir: Path,
                          ) -> None:
    """Check every engine-arg name against the EngineArgs of the vLLM that will run it, before
    any engine starts; raises ScenarioError with every unknown name at once."""
    import difflib

    from parity.engines.process import validate_engine_args

    jobs: dict[str, list[tuple[Scenario, str, EngineSetting]]] = {}
    for sc in scenarios:
        for role, setting in sc.settings().items():
            jobs.setdefault(setting.env, []).append((sc, role, setting))
    problems = []
    for env_name, items in jobs.items():
        python = pythons[env_name]
        if python not in _ENGINE_FIELDS:  # one vLLM import per interpreter per process
            reply = validate_engine_args(python, [], log_dir / f"validate-{env_name}.log")
            _ENGINE_FIELDS[python] = (set(reply["fields"]), reply["vllm_version"])
        fields, version = _ENGINE_FIELDS[python]
        for sc, role, setting in items:
            for name in setting.args:
                if name in fields:
                    continue
                close = difflib.get_close_matches(name, sorted(fields), n=3)
                hint = (f"did you mean {', '.join(close)}?" if close
                        else "see vLLM's EngineArgs for the accepted names")
                problems.append((str(sc.path), f"{role}.engine_args.{name}",
                                 f"not an engine argument of vLLM {version} ({env_name}); "
                                 f"{hint}"))
    if problems:
        # The same bad key from a shared profile is reported once per file and field.
        raise ScenarioError(sorted(set(problems)))


def run(scenarios: list[Scenario], out_dir: Path, log: Log = print,
        start_timeout: float = 600.0, request_timeout: float = 1800.0) -> RunResult:
    """Run scenarios end to end. Engine failures make the affected scenarios "unresolved";
    an interrupt keeps what finished (RunResult.interrupted says why)."""
    from parity.engines.process import VllmEngine
    from parity.models import fingerprint, resolve_model

    t_run = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = out_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    run = RunResult(run_id=out_dir.name, results=[ScenarioResult(sc) for sc in scenarios])
    timings = run.timings

    # Models, tokenizers, prompts: all in the harness, so every engine gets identical tokens.
    t0 = time.perf_counter()
    from transformers import AutoTokenizer

    tokenizers = {}
    for res in run.results:
        model_path = str(resolve_model(res.scenario.model))
        res.model_path = model_path
        if model_path not in tokenizers:
            tokenizers[model_path] = AutoTokenizer.from_pretrained(model_path)
            run.models[model_path] = {"name": res.scenario.model,
                                      "fingerprint": fingerprint(model_path)}
        sc = res.scenario
        res.prompts = load_prompts(sc.prompt_source, sc.prompt_items, sc.prompt_seed)
    timings["prepare_s"] = time.perf_counter() - t0

    # Engine environments and argument validation, before any engine starts.
    t0 = time.perf_counter()
    env_names = {s.env for sc in scenarios for s in sc.settings().values()}
    pythons = {name: python_for(name, log) for name in sorted(env_names)}
    _validate_engine_args(scenarios, pythons, log_dir)
    timings["validate_s"] = time.perf_counter() - t0

    # One engine per distinct (setting, model): start once, serve every scenario that uses it.
    plan: dict[tuple[str, str], list[tuple[ScenarioResult, str]]] = {}
    for res in run.results:
        for role, setting in res.scenario.settings().items():
            plan.setdefault((setting.key(), res.model_path), []).append((res, role))
    timings["engine_start_s"] = timings["generate_s"] = 0.0
    try:
        for n, ((key, model_path), jobs) in enumerate(plan.items(), 1):
            setting = jobs[0][0].scenario.settings()[jobs[0][1]]
            log_path = log_dir / f"engine-{n}-{key}.log"
            log(f"[engine {n}/{len(plan)}] starting {setting.label()} on "
                f"{Path(model_path).name}")
            engine = VllmEngine(setting, model_path, pythons[setting.env], log_path,
                                start_timeout=start_timeout, request_timeout=request_timeout)
            record = {"n": n, "setting": setting.to_dict(), "model": model_path,
                      "log": str(log_path), "scenarios": [r.scenario.name for r, _ in jobs]}
            run.engines.append(record)
            try:
                engine.start()
                record["start_s"] = engine.start_s
                record["effective_config"] = engine.effective_config()
                timings["engine_start_s"] += engine.start_s
                log(f"[engine {n}/{len(plan)}] started in {engine.start_s:.1f}s")
                # Scenarios asking this engine for the same prompts and sampling (per-prompt
                # seeds) get the same sequences: generated once, reused (e.g. one V0 baseline
                # for several candidates).
                generated: dict[str, list[Sequence]] = {}
                for res, role in jobs:
                    er = EngineRun(role, setting, log_path=str(log_path),
                                   effective_config=engine.effective_config(),
                                   start_s=engine.start_s)
                    res.runs[role] = er
                    prompts = render(tokenizers[model_path], res.prompts, res.scenario.chat)
                    t0 = time.perf_counter()
                    module = plugin(res.scenario.category)
                    if module is not None:
                        module.drive(engine, res, role, prompts, log)
                    else:
                        memo = json.dumps([prompts, res.scenario.sampling.to_dict()])
                        if memo not in generated:
                            generated[memo] = engine.generate(prompts, res.scenario.sampling)
                        else:
                            er.reused = True
                        er.sequences = generated[memo]
                        other = res.runs.get("baseline" if role == "candidate" else "candidate")
                        if (res.scenario.category == "rl" and other is not None
                                and other.sequences):
                            # The second engine of the pair scores the first one's tokens.
                            er.extra["direct_of"] = other.role
                            er.extra["direct_forced"] = teacher_force(
                                engine, other.sequences, res.scenario.sampling)
                    er.generate_s = time.perf_counter() - t0
                    timings["generate_s"] += er.generate_s
                    n_tok = sum(len(s.token_ids) for s in er.sequences)
                    log(f"  {res.scenario.name} [{role}]: {len(er.sequences)} sequences, "
                        f"{n_tok} tokens in {er.generate_s:.1f}s"
                        + (" (reused: same prompts and sampling)" if er.reused else ""))
            except EngineError as exc:
                record["error"] = str(exc)
                log(f"[engine {n}/{len(plan)}] FAILED: {exc}")
                for res, role in jobs:
                    er = res.runs.setdefault(role, EngineRun(role, setting,
                                                             log_path=str(log_path)))
                    if not er.sequences:
                        er.error = str(exc)
            finally:
                record["worker_pgid"] = engine.pgid
                engine.close()
    except KeyboardInterrupt:
        run.interrupted = "interrupted by the user"
        log("interrupted: engines stopped; reporting what finished")

    # Reference scoring: one model load per (checkpoint, head dtype), batched forwards.
    t0 = time.perf_counter()
    refs = References(log)
    scores: dict[tuple[int, str], list] = {}
    for res in run.results:
        if plugin(res.scenario.category) is not None:
            continue
        for role, er in res.runs.items():
            if er.error or not er.sequences:
                continue
            t1 = time.perf_counter()
            ref = refs.get(res.model_path, res.scenario.head_dtype)
            scores[(id(res), role)] = ref.score(
                [(s.prompt_token_ids, s.token_ids) for s in er.sequences], res.scenario.sampling)
            res.score_s += time.perf_counter() - t1
    directs = {}
    for res in run.results:
        t1 = time.perf_counter()
        directs[id(res)] = _direct(res, scores, refs)
        res.score_s += time.perf_counter() - t1
    timings["score_s"] = time.perf_counter() - t0

    # Verdicts.
    for res in run.results:
        t1 = time.perf_counter()
        module = plugin(res.scenario.category)
        if module is not None and not _failed(res):
            res.verdict, res.detail = module.judge(res, refs)
        else:
            res.verdict, res.detail = judge(res, scores)
        if directs.get(id(res)):
            res.detail["direct"] = directs[id(res)]
        _add_reward(res)
        res.check_s = time.perf_counter() - t1
    run.reference_stats = refs.stats()
    refs.close()
    timings["total_s"] = time.perf_counter() - t_run
    timings["harness_overhead_s"] = timings["total_s"] - sum(
        timings.get(k, 0.0) for k in ("engine_start_s", "generate_s", "score_s"))
    return run


def _direct(res: ScenarioResult, scores: dict, refs: References) -> dict[str, Any] | None:
    """The engine-vs-engine gap on the same tokens (see parity.direct), when the second engine
    of an rl pair was teacher-forced on the first one's tokens."""
    for role, er in res.runs.items():
        forced, other_role = er.extra.get("direct_forced"), er.extra.get("direct_of")
        other = res.runs.get(other_role) if other_role else None
        if not forced or other is None or (id(res), other_role) not in scores:
            continue
        sampling = res.scenario.sampling
        ref_scores = scores[(id(res), other_role)]
        pairs = [(s.prompt_token_ids, s.token_ids) for s in other.sequences]
        tempered = refs.get(res.model_path, res.scenario.head_dtype).score(
            pairs, semantics_specs(sampling)["tempered"])
        ref = {"raw": [r.raw_logprob for r in ref_scores],
               "tempered": [r.processed_logprob for r in tempered],
               "processed": [r.processed_logprob for r in ref_scores]}
        mode = ((other.effective_config or {}).get("key") or {}).get("logprobs_mode")
        return summarize(forced, other.sequences, role, other_role, ref, mode)
    return None


def _failed(res: ScenarioResult) -> Verdict | None:
    """An "unresolved" verdict when an engine the scenario needs failed or never ran."""
    for role in res.scenario.settings():
        er = res.runs.get(role)
        if er is None or er.error:
            why = er.error.splitlines()[0] if er and er.error else "the engine did not run"
            return Verdict("unresolved", "engine_failed", f"{role} engine failed: {why}")
    return None


def judge(res: ScenarioResult, scores: dict) -> tuple[Verdict, dict[str, Any]]:
    """The scenario's verdict; "unresolved" when an engine it needs produced nothing."""
    sc = res.scenario
    failed = _failed(res)
    if failed is not None:
        return failed, {}
    for role in sc.settings():
        if (id(res), role) not in scores:
            return Verdict("unresolved", "no_samples", f"{role} engine returned no sequences"), {}
    if sc.category == "logprobs":
        cand = res.runs["candidate"]
        return check_logprobs(cand.sequences, scores[(id(res), "candidate")], sc.tolerances,
                              sc.clip, sc.min_tokens)
    if sc.category == "rl":
        runs = {role: (er.sequences, scores[(id(res), role)], rewards(res, er.sequences))
                for role, er in res.runs.items()}
        configs = {role: er.effective_config for role, er in res.runs.items()}
        return check_rl(runs, sc.margins, sc.clip, sc.min_tokens, configs)
    raise ValueError(f"no check for category {sc.category!r}")


def rewards(res: ScenarioResult, seqs: list[Sequence]) -> list[float] | None:
    """Per-sequence reward, or None when the scenario has no reward function."""
    if not res.scenario.reward:
        return None
    fn = REWARDS[res.scenario.reward]
    values = [fn(res.prompts[s.prompt_index], s.text) for s in seqs]
    return None if any(v is None for v in values) else values


def _add_reward(res: ScenarioResult) -> None:
    """Mean reward per engine role, when the scenario names a reward function."""
    for role, er in res.runs.items():
        values = rewards(res, er.sequences)
        if values:
            res.detail.setdefault("reward", {})[role] = {"mean": sum(values) / len(values),
                                                         "n": len(values)}


def new_run_dir(output: Path | None, results_root: Path = Path("results")) -> Path:
    """results/<run-id>/ (a UTC timestamp), or the --output directory as given."""
    if output is not None:
        return output
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = results_root / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = results_root / f"{stamp}-{suffix}"
    return path
