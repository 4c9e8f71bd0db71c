"""Worker process that hosts one vLLM engine (V0 or V1, vllm_host.VllmHost) and answers parity's
requests: one JSON object per line on stdin, one per line on the --reply-fd descriptor (stdout and
stderr are the engine's log). Run by any interpreter with vLLM: standard library and vLLM only."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

# Its siblings: by bare name when run as a script (the script's directory is sys.path[0], and
# the V1 workers vLLM spawns find vllm_updates' functions by that name), or from the package
# when imported as parity.engines.vllm_worker (tests). Only the standard library and vLLM
# otherwise: the V0 engine's interpreter has no parity.
if __package__:
    from parity.engines import (
        identity,
        vllm_host,
        vllm_nopause,
        vllm_progress,
        vllm_registry,
        vllm_updates,
        vllm_validate,
    )
else:
    import identity
    import vllm_host
    import vllm_nopause
    import vllm_progress
    import vllm_registry
    import vllm_updates
    import vllm_validate

PROTOCOL_VERSION = 1


def read_model_facts(model_path: str) -> dict:
    """The model-identity facts of a checkpoint as this interpreter's transformers reads it
    (AutoConfig, GenerationConfig, AutoTokenizer; no vLLM import, so it takes seconds), by
    parity.engines.identity's names and normalisation (see identity.read_facts).

    parity/engines/identity.py needs only the standard library at import time: the worker's
    interpreter (e.g. the V0 env) imports it from beside this script, without parity.
    """
    return identity.read_facts(model_path)


# ----------------------------------------------------------------------------- the loop


def serve(reply_fd: int) -> None:
    reply = os.fdopen(reply_fd, "w", buffering=1)
    host = vllm_host.VllmHost()

    def send(obj: dict) -> None:
        reply.write(json.dumps(obj) + "\n")
        reply.flush()

    vllm_progress.PROGRESS["send"] = send
    send(
        {
            "ok": True,
            "op": "hello",
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "python": sys.version.split()[0],
        }
    )
    for line in sys.stdin:  # EOF (the harness went away) ends the worker
        line = line.strip()
        if not line:
            continue
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "preload":  # import vLLM now, while the harness is busy elsewhere
                import vllm  # lazy: the point of this op
                from vllm.engine.arg_utils import EngineArgs  # lazy: as above

                try:  # what a V1 engine, and its config's checks, import on first use (~1 s)
                    import vllm.v1.executor  # noqa: F401  (lazy: as above)
                except ImportError:
                    pass

                result = {"modules": [vllm.LLM.__module__, EngineArgs.__module__]}
            elif op == "start":
                result = host.start(request["model"], request.get("engine_args", {}))
            elif op == "generate":
                result = host.generate(request["prompts"], request["sampling"])
            elif op == "reset_prefix_cache":
                result = host.reset_prefix_cache()
            elif op == "update_weights":
                result = {
                    "update": vllm_updates.Updater(host, **request.get("transport", {})).update(
                        request["checkpoint"],
                        request["mode"],
                        request["clear_cache"],
                        request["via"],
                    )
                }
            elif op == "generate_with_update":
                result = vllm_updates.Updater(
                    host, **request.get("transport", {})
                ).generate_with_update(
                    request["prompts"],
                    request["sampling"],
                    request["checkpoint"],
                    request["after_tokens"],
                    request["mode"],
                    request["clear_cache"],
                    request["via"],
                    request["ignore_eos"],
                )
            elif op == "generate_nopause":
                result = vllm_nopause.NoPause(vllm_updates.Updater(host)).generate(
                    **{k: v for k, v in request.items() if k != "op"}
                )
            elif op == "effective_config":
                result = {"effective_config": host.effective_config()}
            elif op == "facts":  # a validator reads a checkpoint as this environment does
                result = {"facts": read_model_facts(request["model"])}
            elif op == "validate":
                # A validator starts no engine: vLLM's model inspection runs in it.
                vllm_registry.install(in_process=True)
                result = vllm_validate.validate_engine_args(request["arg_sets"])
            elif op == "close":
                host.close()
                send({"ok": True, "op": op})
                break
            else:
                raise ValueError(f"unknown op {op!r}")
            send({"ok": True, "op": op, **result})
        except BaseException as exc:  # report every failure to the harness, then go on or die
            traceback.print_exc()
            send(
                {
                    "ok": False,
                    "op": op,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-4000:],
                }
            )
            if op == "start" or isinstance(exc, (KeyboardInterrupt, SystemExit)):
                break
    reply.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reply-fd", type=int, required=True)
    args = parser.parse_args()
    serve(args.reply_fd)
    sys.stdout.flush()
    # vLLM may leave non-daemon threads behind; the harness also kills the process group.
    os._exit(0)


if __name__ == "__main__":
    main()
