"""The vLLM engine (VllmEngine, engine kind "vllm") run in a worker process of its setting's
environment: the worker's environment variables, start (or preload ahead), generate, prefix-cache
reset and weight updates as requests to its WorkerProcess."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from parity.engines.base import EngineError, EngineSetting, SamplingSpec, Sequence
from parity.engines.process import WorkerProcess, cache_vars, env_preloads


class VllmEngine:
    """The vLLM engine (V0 or V1, whichever the interpreter's vLLM and env vars select), run in
    a worker process. Implements parity.engines.base.Engine."""

    def __init__(
        self,
        setting: EngineSetting,
        model: str,
        python: str,
        log_path: Path,
        start_timeout: float = 600.0,
        request_timeout: float = 1800.0,
    ):
        self.setting = setting
        self.name = setting.label()
        self.model = model
        self.python = python
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.request_timeout = request_timeout
        self.start_s: float | None = None
        self._worker: WorkerProcess | None = None
        self._effective: dict[str, Any] | None = None
        self.checkpoint: str | None = None  # weights loaded by update_weights (None: `model`)
        self.on_progress = None  # called with the worker's progress messages during generate

    @property
    def pgid(self) -> int | None:
        """The worker's process group (the worker and everything it started), once started."""
        return self._worker.proc.pid if self._worker is not None else None

    def __enter__(self) -> "VllmEngine":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The worker must not import parity: make sure the harness's source tree is not on its path.
        env.pop("PYTHONPATH", None)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
        # V1 sends functions to its workers (collective_rpc; the in-place weight-update control)
        # only with pickle allowed on its local engine<->worker channel.
        env.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        env.update(env_preloads(self.python))
        env.update({k: v for k, v in cache_vars().items() if k not in env})
        env.update(self.setting.variables)
        return env

    def preload(self) -> None:
        """Start the worker process and have it import vLLM now (e.g. while another engine
        generates); start() then only creates the engine. No engine, no device memory."""
        if self._worker is None:
            self._worker = WorkerProcess(self.name, self.python, self._env(), self.log_path)
            self._worker.preload()

    def start(self) -> None:
        t0 = time.perf_counter()
        if self._worker is None:
            self._worker = WorkerProcess(self.name, self.python, self._env(), self.log_path)
        self._worker.ready(timeout=self.start_timeout)
        reply = self._worker.request(
            {"op": "start", "model": self.model, "engine_args": self.setting.args},
            timeout=self.start_timeout,
        )
        self._effective = reply["effective_config"]
        self.start_s = time.perf_counter() - t0

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Sequence]:
        self._require().on_progress = self.on_progress
        reply = self._require().request(
            {"op": "generate", "prompts": prompts, "sampling": sampling.to_dict()},
            timeout=self.request_timeout,
        )
        return [Sequence.from_dict(d) for d in reply["sequences"]]

    def reset_prefix_cache(self) -> bool:
        """Drop the engine's cached KV blocks (for probes that need a cold cache)."""
        return bool(
            self._require().request({"op": "reset_prefix_cache"}, timeout=self.request_timeout)[
                "reset"
            ]
        )

    def effective_config(self) -> dict[str, Any]:
        if self._effective is None:
            raise EngineError(f"engine {self.name} has not started")
        return self._effective

    def update_weights(
        self,
        checkpoint: str,
        mode: str = "keep",
        clear_cache: bool = False,
        via: str = "reload",
        **transport: Any,
    ) -> dict[str, Any]:
        """Load the checkpoint directory's weights into the live engine between generate calls.

        Args:
            checkpoint: a safetensors checkpoint of the same architecture.
            mode: how requests in flight are treated ("keep" | "wait" | "abort"; V1's pause).
            clear_cache: also drop the prefix cache (KV computed with the old weights).
            via: "reload" (the engine's real reload path), "tensors" (the checkpoint's tensors
                into the model's load_weights, bucket by bucket), "transfer" (vLLM's
                weight-transfer API) or "inplace" (param.data.copy_ into the live parameters:
                the known-broken path, for negative controls).
            transport: tensors and transfer: bucket_mb (MiB per load_weights call), backend
                (transfer); see vllm_updates.Updater.
        Returns:
            The update record: version (int, +1 per update), via, mechanism, pause_s, load_s,
            resume_s, latency_s, cache_cleared.
        """
        reply = self._require().request(
            {
                "op": "update_weights",
                "checkpoint": str(checkpoint),
                "mode": mode,
                "clear_cache": clear_cache,
                "via": via,
                "transport": transport,
            },
            timeout=self.request_timeout,
        )
        self.checkpoint = str(checkpoint)
        return reply["update"]

    def generate_with_update(
        self,
        prompts: list[list[int]],
        sampling: SamplingSpec,
        checkpoint: str,
        after_tokens: int,
        mode: str = "keep",
        clear_cache: bool = False,
        via: str = "reload",
        ignore_eos: bool = False,
        **transport: Any,
    ) -> tuple[list[Sequence], dict[str, Any]]:
        """Generate and update the weights in flight, once every running request has sampled
        `after_tokens` tokens (arguments as in update_weights).

        Returns:
            (sequences, record): each sequence's `weight_versions` gives the version that
            produced each token; the record is update_weights' plus `seen_at_request` per
            sequence (in `extra`), lag_tokens (tokens sampled under the old weights after the
            update was requested) and requested_after_s.
        """
        reply = self._require().request(
            {
                "op": "generate_with_update",
                "prompts": prompts,
                "sampling": sampling.to_dict(),
                "checkpoint": str(checkpoint),
                "after_tokens": after_tokens,
                "mode": mode,
                "clear_cache": clear_cache,
                "via": via,
                "ignore_eos": ignore_eos,
                "transport": transport,
            },
            timeout=self.request_timeout,
        )
        self.checkpoint = str(checkpoint)
        return [Sequence.from_dict(d) for d in reply["sequences"]], {
            **reply["update"],
            "seen_at_request": [d["seen_at_request"] for d in reply["sequences"]],
        }

    def generate_nopause(
        self,
        prompts: list[list[int]],
        sampling: SamplingSpec,
        checkpoint: str,
        after_tokens: int,
        buckets: list[list[str]],
        late: int = 0,
        ignore_eos: bool = False,
        pause: str | None = None,
        clear_cache: bool = False,
    ) -> tuple[list[Sequence], dict[str, Any]]:
        """Generate and push the weights while the engine keeps generating, bucket by bucket
        (`buckets`: checkpoint tensor-name prefixes each), the last `late` prompts arriving
        after the trigger; `pause` "wait"/"keep": the control, paused, the whole checkpoint
        at once, the prefix cache cleared if `clear_cache` (parity/engines/vllm_nopause.py).

        Returns:
            (sequences, record): each sequence's `weight_versions` is the weight state of each
            token (0 old, j the first j buckets new).
        """
        reply = self._require().request(
            {
                "op": "generate_nopause",
                "prompts": prompts,
                "sampling": sampling.to_dict(),
                "checkpoint": str(checkpoint),
                "after_tokens": after_tokens,
                "buckets": buckets,
                "late": late,
                "ignore_eos": ignore_eos,
                "pause": pause,
                "clear_cache": clear_cache,
            },
            timeout=self.request_timeout,
        )
        self.checkpoint = str(checkpoint)
        return [Sequence.from_dict(d) for d in reply["sequences"]], reply["update"]

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def _require(self) -> WorkerProcess:
        if self._worker is None:
            raise EngineError(f"engine {self.name} is not running")
        return self._worker
