"""`python -m parity.bench bind`: generation throughput of one engine setting under each CPU
binding (`VLLM_CPU_OMP_THREADS_BIND`), to choose how many cores the engine gets on this
machine. vLLM's CPU engine binds its OpenMP threads to the cores of one NUMA node and keeps one
for its own processes ("auto"); on a 2-core machine that is one core computing.

Each binding is one `parity check` of the scenario in a child process (one engine start), run
one after the other while the harness waits: the table shows the generation seconds, tokens
and tokens/s of each, and the fastest."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from parity.bench import table as bench_table


def bindings_for(cores: list[int]) -> list[str]:
    """The bindings worth trying: vLLM's auto, one core, and all of them as a range."""
    out = ["auto", str(cores[0])]
    if len(cores) > 1:
        out.append(
            f"{cores[0]}-{cores[-1]}"
            if cores == list(range(cores[0], cores[-1] + 1))
            else ",".join(map(str, cores))
        )
    return out


def measure(
    scenario: str, profile: str, binds: list[str], out: Path, extra: list[str]
) -> list[dict]:
    """One row per binding: generation seconds, generated tokens, tokens/s, check exit code."""
    rows = []
    for bind in binds:
        run_dir = out / f"bind-{bind.replace(',', '_')}"
        code, wall = bench_table.run_check(
            [scenario, "--candidate", f"{profile},env.VLLM_CPU_OMP_THREADS_BIND={bind}", *extra],
            run_dir,
        )
        timings = {}
        if (run_dir / "report.json").is_file():
            timings = json.loads((run_dir / "report.json").read_text()).get("timings") or {}
        gen, tok = timings.get("generate_s"), timings.get("tokens_generated")
        rows.append(
            {
                "bind": bind,
                "exit_code": code,
                "wall_s": wall,
                "generate_s": gen,
                "tokens": tok,
                "engine_start_s": timings.get("engine_start_s"),
                "tokens_per_s": tok / gen if gen and tok else None,
            }
        )
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m parity.bench bind",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", nargs="?", default="scenarios/logprobs-processed.toml")
    p.add_argument("--profile", default="v1-parity")
    p.add_argument(
        "--bind",
        action="append",
        default=None,
        help="a VLLM_CPU_OMP_THREADS_BIND value (repeatable; default: auto, one core, every core)",
    )
    p.add_argument("--output", "-o", type=Path, default=Path("results/bench-bind"))
    p.add_argument("--json", action="store_true")
    args, extra = p.parse_known_args(argv)
    binds = args.bind or bindings_for(sorted(os.sched_getaffinity(0)))
    rows = measure(args.scenario, args.profile, binds, args.output, extra)
    done = [r for r in rows if r["tokens_per_s"]]
    best = max(done, key=lambda r: r["tokens_per_s"])["bind"] if done else None
    if args.json:
        print(json.dumps({"rows": rows, "fastest": best}, indent=1))
    else:
        table = Table(title=f"generation per CPU binding: {args.scenario} on {args.profile}")
        for col in (
            "VLLM_CPU_OMP_THREADS_BIND",
            "engine start s",
            "generate s",
            "tokens",
            "tokens/s",
            "exit",
        ):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["bind"] + (" (fastest)" if r["bind"] == best else ""),
                *(f"{r[k]:.1f}" if r[k] else "n/a" for k in ("engine_start_s", "generate_s")),
                str(r["tokens"] or "n/a"),
                f"{r['tokens_per_s']:.1f}" if r["tokens_per_s"] else "n/a",
                str(r["exit_code"]),
            )
        Console().print(table)
    return 0 if done else 1
