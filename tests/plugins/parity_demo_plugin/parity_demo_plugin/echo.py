"""Engine kind `echo`: a pure-Python engine with no model and no process. Each completion echoes
the prompt's tokens from an offset set by the seed, each token with the logprob `logprob(token,
position)` that the demo scorer also computes; engine_args can make it stop early or shift them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from parity.engines import identity
from parity.engines.base import EngineError, EngineSetting, SamplingSpec, Sequence

ARGS = {
    "stop_after": "an integer >= 0: every completion stops after this many tokens (default: none)",
    "logprob_shift": "a number added to every logprob it returns (default 0)",
}


def logprob(token: int, position: int) -> float:
    """The logprob the echo engine gives a token at a completion position (the demo scorer's)."""
    return -0.1 * (1 + (token + position) % 7)


def completion(prompt: list[int], seed: int, sample: int, length: int) -> list[int]:
    """`length` tokens of the prompt, cyclically, from the offset seed + sample."""
    prompt = prompt or [0]
    return [prompt[(seed + sample + j) % len(prompt)] for j in range(length)]


class EchoEngine:
    """Implements parity.engines.base.Engine without vLLM: deterministic tokens and logprobs.

    engine_args: stop_after (stop every completion after that many tokens, finish_reason
    "stop"), logprob_shift (added to every logprob: an engine that disagrees with the trainer).
    """

    def __init__(
        self,
        setting: EngineSetting,
        model_path: str,
        python: str,
        log_path: Path,
        start_timeout: float = 600.0,
        request_timeout: float = 1800.0,
    ):
        self.setting = setting
        self.name = setting.label()
        self.model_path = str(model_path)
        self.log_path = Path(log_path)
        self.on_progress = None
        self.start_s: float | None = None
        self.pgid = None  # it starts no process
        self._config: dict[str, Any] | None = None

    @classmethod
    def setting_problems(cls, setting: EngineSetting) -> list[tuple[str, str]]:
        """What parity's preflight reports before any engine starts: [(field, message)]."""
        out = []
        args = setting.args
        for name in args:
            if name not in ARGS:
                out.append(
                    (
                        f"engine_args.{name}",
                        f"not an argument of the echo engine; it takes {', '.join(ARGS)}",
                    )
                )
        stop = args.get("stop_after")
        if stop is not None and (type(stop) is not int or stop < 0):
            out.append(("engine_args.stop_after", f"{stop!r}: {ARGS['stop_after']}"))
        shift = args.get("logprob_shift", 0.0)
        if type(shift) not in (int, float):
            out.append(("engine_args.logprob_shift", f"{shift!r}: {ARGS['logprob_shift']}"))
        return out

    def __enter__(self) -> "EchoEngine":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        t0 = time.perf_counter()
        problems = self.setting_problems(self.setting)
        if problems:
            raise EngineError("echo engine: " + "; ".join(f"{f}: {m}" for f, m in problems))
        # The identity facts of the checkpoint it was given, read as the trainer reads them.
        facts = identity.read_facts(self.model_path)
        args = self.setting.args
        self._config = {
            "key": {
                "engine_impl": f"{type(self).__module__}.{type(self).__name__}",
                "stop_after": args.get("stop_after"),
                "logprob_shift": float(args.get("logprob_shift", 0.0)),
                "logprobs_mode": "processed_logprobs",
                **{k: facts.get(k) for k in identity.MODEL_KEYS},
            },
            "notes": {"model.*": "read from the checkpoint; the echo engine runs no model"},
            "raw": {"engine_args": args, "env_vars": self.setting.variables},
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as fh:
            fh.write(f"echo engine started on {self.model_path} with {args}\n")
        self.start_s = time.perf_counter() - t0

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Sequence]:
        if self._config is None:
            raise EngineError("echo engine: generate() before start()")
        t0 = time.perf_counter()
        stop = self._config["key"]["stop_after"]
        shift = self._config["key"]["logprob_shift"]
        length = sampling.max_tokens if stop is None else min(stop, sampling.max_tokens)
        out = []
        for i, prompt in enumerate(prompts):
            for k in range(sampling.n):
                tokens = completion(prompt, sampling.seed + i, k, length)
                prompt_lps = None
                if sampling.prompt_logprobs is not None:
                    prompt_lps = [None] + [logprob(t, j) + shift for j, t in enumerate(prompt)][1:]
                out.append(
                    Sequence(
                        prompt_index=i,
                        sample_index=k,
                        prompt_token_ids=list(prompt),
                        token_ids=tokens,
                        logprobs=[logprob(t, j) + shift for j, t in enumerate(tokens)],
                        finish_reason="length" if length == sampling.max_tokens else "stop",
                        prompt_logprobs=prompt_lps,
                    )
                )
        if self.on_progress is not None:
            elapsed = time.perf_counter() - t0
            self.on_progress(
                {
                    "op": "progress",
                    "done": len(prompts),
                    "total": len(prompts),
                    "elapsed_s": elapsed,
                    "out_tok_s": sum(len(s.token_ids) for s in out) / max(elapsed, 1e-9),
                }
            )
        return out

    def effective_config(self) -> dict[str, Any]:
        if self._config is None:
            raise EngineError("echo engine: effective_config() before start()")
        return self._config

    def update_weights(
        self, checkpoint: str, mode: str = "keep", clear_cache: bool = False
    ) -> dict[str, Any]:
        raise EngineError("echo engine: it has no weights to update")

    def close(self) -> None:
        self._config = None
