"""Benchmarks: where a run's wall time goes (table, run), the per-token metrics and statistics
at 1M tokens (metrics), trainer-side scoring at a real model shape (reference), and the
run-to-run noise of the RL metrics behind the rl category's margins (noise).

Run: python -m parity.bench noise --profile v1-parity --model smollm2-135m --seeds 4
     python -m parity.bench reference [--seqs 16 --layers 16 ...] (parity/bench/reference.py)
     python -m parity.bench table RUN_DIR [--json]   (where a run's time went: bench_table.py)
     python -m parity.bench run [PATHS...] [--model M] [--output DIR] [check options] [--json]
     python -m parity.bench bind [SCENARIO] [--profile P] [--bind X ...]  (bench_bind.py)
     python -m parity.bench metrics [--tokens 1000000] [--json]   (bench_metrics.py)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console

from parity.bench import bind as bench_bind
from parity.bench import metrics as bench_metrics
from parity.bench import reference as bench_reference
from parity.bench import table as bench_table
from parity.categories.rl import role_metrics
from parity.run import runner
from parity.run.runner import new_run_dir
from parity.run.scenario import Overrides, Scenario, load_scenarios, make_setting

METRICS = ("kl_k3_mean", "abs_dlogp_mean", "clip_rate_token", "entropy_ref_mean", "reward_mean")


def noise(template: Scenario, profiles: list[str], seeds: list[int], out_dir: Path) -> dict:
    """Run `template` once per (profile, seed) - one engine start per profile - and report each
    metric's per-seed values and the largest |difference| between two seeds of one profile."""

    scenarios = []
    for profile in profiles:
        for seed in seeds:
            scenarios.append(
                replace(
                    template,
                    name=f"{profile}-seed{seed}",
                    category="logprobs",
                    sampling=replace(template.sampling, seed=seed),
                    candidate=make_setting(profile),
                    baseline=None,
                )
            )
    run = runner.run(scenarios, out_dir)
    refs = runner.References(print)
    result: dict = {"timings": run.timings, "profiles": {}}
    for profile in profiles:
        values: dict[str, list[float]] = {m: [] for m in METRICS}
        for res in run.results:
            if not res.scenario.name.startswith(f"{profile}-seed"):
                continue
            er = res.runs["candidate"]
            ref = refs.get(res.model_path, res.scenario.head_dtype, er)
            scores = ref.score(
                [(s.prompt_token_ids, s.token_ids) for s in er.sequences], res.scenario.sampling
            )
            summary, _ = role_metrics(
                er.sequences, scores, res.scenario.clip, res.rewards(er.sequences)
            )
            for m in METRICS:
                values[m].append(float(summary.get(m, float("nan"))))
        spread = {
            m: max((abs(a - b) for a, b in itertools.combinations(v, 2)), default=None)
            for m, v in values.items()
        }
        std = {m: float(np.std(v, ddof=1)) if len(v) > 1 else None for m, v in values.items()}
        result["profiles"][profile] = {"values": values, "max_pair_diff": spread, "std": std}
    refs.close()
    return result


def _print_table(data: dict, as_json: bool, extra: dict | None = None) -> None:

    table = {**bench_table.phase_table(data), **(extra or {})}
    if as_json:
        print(json.dumps(table, indent=1))
    else:
        bench_table.render(table, Console())


def run_main(argv: list[str]) -> int:
    """bench run: `parity check` with the other arguments, then its table; check's exit code."""

    p = argparse.ArgumentParser(
        prog="python -m parity.bench run",
        description="Run `parity check` (every argument but --json "
        "and --output goes to it), then print the table.",
    )
    p.add_argument("--output", "-o", type=Path, default=None)
    p.add_argument("--json", action="store_true", help="the table as JSON")
    args, check_args = p.parse_known_args(argv)
    out = new_run_dir(args.output, prefix="bench-")
    code, wall = bench_table.run_check(check_args, out)
    if not (out / "report.json").is_file():
        print(f"parity check exited {code} without writing {out}/report.json", file=sys.stderr)
        return code or 2
    _print_table(
        bench_table.load(out), args.json, {"check_exit_code": code, "process_wall_s": wall}
    )
    return code


def main(argv: list[str] | None = None) -> None:
    """`parity bench ARGS` and `python -m parity.bench ARGS` (argv: ARGS, default sys.argv)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["reference"]:
        sys.exit(bench_reference.main(argv[1:]))
    if argv[:1] == ["run"]:
        sys.exit(run_main(argv[1:]))
    if argv[:1] == ["bind"]:
        sys.exit(bench_bind.main(argv[1:]))
    parser = argparse.ArgumentParser(
        prog="parity bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser(
        "reference",
        help="trainer-side reference scoring at a real model shape: "
        "python -m parity.bench reference --help",
    )
    sub.add_parser(
        "run",
        help="run `parity check ARGS`, then print its table: python -m parity.bench run --help",
    )
    sub.add_parser(
        "bind",
        help="generation tokens/s per CPU binding of the engine: "
        "python -m parity.bench bind --help",
    )
    p = sub.add_parser("table", help="where a run's wall time went, from RUN_DIR/report.json")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true", help="the table as JSON")
    p = sub.add_parser(
        "metrics", help="per-token metrics and statistics on synthetic data, timed per function"
    )
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="best of this many passes")
    p.add_argument(
        "--samples-per-prompt",
        type=int,
        default=4,
        help="sequences per prompt (the statistics resample prompts)",
    )
    p.add_argument("--json", action="store_true", help="the timings as JSON")
    p = sub.add_parser("noise", help="run-to-run noise of the RL metrics")
    p.add_argument("--scenario", default="scenarios/rl-v0-vs-v1-parity.toml")
    p.add_argument("--profile", action="append", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--output", default="results/bench-noise")
    args = parser.parse_args(argv)
    if args.cmd == "table":
        _print_table(bench_table.load(args.run_dir), args.json)
        return
    if args.cmd == "metrics":
        sys.exit(
            bench_metrics.main(
                args.tokens, args.seed, args.json, args.repeat, args.samples_per_prompt
            )
        )

    (template,) = load_scenarios([Path(args.scenario)], Overrides(model=args.model))
    seeds = [1000 * (i + 1) for i in range(args.seeds)]
    t0 = time.perf_counter()
    result = noise(template, args.profile or ["v1-parity"], seeds, Path(args.output))
    result["wall_s"] = time.perf_counter() - t0
    print(json.dumps(result, indent=1))
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "noise.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
