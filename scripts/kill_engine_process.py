"""How long a `VllmEngine` takes to report one of its own vLLM processes killed: SIGKILL to the
engine core or its worker (the processes vLLM V1 names VLLM::EngineCore / VLLM::Worker), before
a generate call or `--after` seconds into it; prints when the call raised and with what
(docs/measurements.md#dead-engine-core). Starts one V1 engine: run it under the engine lock.

    PYTHONPATH=$PWD .venv/bin/python scripts/kill_engine_process.py --kill core --after 3
    PARITY_ENGINE_DEATH_GRACE=1e9 ... (the harness without its watch: the request timeout)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from parity.engines.base import SamplingSpec
from parity.engines.proc_watch import group_processes
from parity.engines.settings import parse_setting
from parity.engines.worker_engine import VllmEngine
from parity.setup.models import build_model

NAMES = {"core": "VLLM::EngineCor", "worker": "VLLM::Worker"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill", choices=sorted(NAMES), default="core")
    parser.add_argument(
        "--after", type=float, default=3.0, help="seconds into the call; <0: before"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="the request timeout")
    parser.add_argument("--log", default="/tmp/kill-engine-process.log")
    args = parser.parse_args()
    setting, problems = parse_setting("v1-parity", "--setting")
    assert not problems, problems
    engine = VllmEngine(
        setting, str(build_model("tiny", log=print)), sys.executable, Path(args.log)
    )
    engine.request_timeout = args.timeout
    t = time.monotonic()
    engine.start()
    print(f"started in {time.monotonic() - t:.1f} s", flush=True)
    killed: list[float] = []

    def kill() -> None:
        time.sleep(max(args.after, 0.0))
        group = group_processes(engine.pgid)
        pid = next(p for p, (comm, _) in group.items() if comm.startswith(NAMES[args.kill]))
        os.kill(pid, signal.SIGKILL)
        killed.append(time.monotonic())
        print(f"killed {group[pid][0]} (pid {pid})", flush=True)

    if args.after < 0:
        kill()
        time.sleep(2)
    else:
        threading.Thread(target=kill, daemon=True).start()
    try:
        out = engine.generate([[1, 2, 3, 4]] * 2048, SamplingSpec(max_tokens=100, seed=1))
        print(f"generate returned {len(out)} sequences (killed: {bool(killed)})")
    except Exception as exc:  # what the harness would report
        print(f"raised {time.monotonic() - killed[0]:.1f} s after the kill: {str(exc)[:300]}")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
