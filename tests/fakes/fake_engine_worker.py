"""A stand-in for parity/engines/vllm_worker.py in tests/test_faults.py: speaks the worker
protocol (JSON lines on stdin, replies on --reply-fd, stdout/stderr are the engine log) without
vLLM, and starts a child process the way vLLM starts its engine core, so that a test can check
the whole process group is gone. Engine args steer it:

- fail_start: text printed to the log, then the start fails as vLLM's does ("Engine core
  initialization failed. See root cause above.").
- generate_sleep: seconds each generate call takes (after printing "generating" to the log).
- core_dies: the generate call kills the "core" first (named VLLM::EngineCore, as vLLM V1
  names its own), then takes its generate_sleep as if nothing happened, as vLLM's client does.
"""

import argparse
import json
import os
import subprocess
import sys
import time

SUMMARY = (
    "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"
)


CORE = "open('/proc/self/comm', 'w').write('VLLM::EngineCore'); import time; time.sleep(300)"


def kill_named(core: subprocess.Popen) -> None:
    """Kill the core once it has taken its name (it starts as "python")."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{core.pid}/comm") as fh:
            if fh.read().startswith("VLLM::"):
                break
        time.sleep(0.02)
    core.kill()


def generate(prompts: list[list[int]], sleep: float) -> dict:
    """One two-token sequence per prompt, after `sleep` seconds."""
    print("generating", flush=True)
    time.sleep(sleep)
    return {
        "sequences": [
            {
                "prompt_index": i,
                "sample_index": 0,
                "prompt_token_ids": p,
                "token_ids": [5, 6],
                "logprobs": [-0.5, -0.25],
                "text": "ok",
            }
            for i, p in enumerate(prompts)
        ]
    }


def serve(reply_fd: int) -> None:
    reply = os.fdopen(reply_fd, "w", buffering=1)
    core = subprocess.Popen([sys.executable, "-c", CORE])
    reply.write(
        json.dumps({"ok": True, "op": "hello", "pid": os.getpid(), "core_pid": core.pid}) + "\n"
    )
    args: dict = {}
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "start":
            args = request["engine_args"]
            if args.get("fail_start"):
                print(args["fail_start"], flush=True)
                print(SUMMARY, flush=True)
                reply.write(json.dumps({"ok": False, "op": op, "error": SUMMARY}) + "\n")
                break
            result = {"effective_config": {"key": {"engine_impl": "fake_engine_worker"}}}
        elif op == "generate":
            if args.get("core_dies"):
                kill_named(core)
            result = generate(request["prompts"], float(args.get("generate_sleep", 0)))
        elif op == "close":
            reply.write(json.dumps({"ok": True, "op": op}) + "\n")
            break
        else:
            result = {}
        reply.write(json.dumps({"ok": True, "op": op, **result}) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--reply-fd", type=int, required=True)
    serve(parser.parse_args().reply_fd)
