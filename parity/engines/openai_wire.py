"""The /v1/completions wire format of a served engine: the request body for one prompt (token
ids, every sampling field explicit, one seed per prompt) and the sequences of an answer (tokens
as ids from the logprobs' "token_id:N", sampled-token and prompt logprobs, cached tokens)."""

from __future__ import annotations

import re
from typing import Any

from parity.engines.base import SamplingSpec, Sequence

_TOKEN = re.compile(r"token_id:(-?\d+)")


def request_body(model: str, prompt: list[int], sampling: SamplingSpec, index: int) -> dict:
    """The /v1/completions body for prompt `index`: every sampling field explicit, so the
    server's generation-config defaults (repetition penalty, min_p, ...) cannot apply where
    the in-process engine would not apply them either."""
    body = {
        "model": model,
        "prompt": list(prompt),
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k > 0 else -1,
        "n": sampling.n,
        "logprobs": sampling.logprobs,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stream": False,
        "return_tokens_as_token_ids": True,
        "return_token_ids": True,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed + index
    if sampling.prompt_logprobs is not None:
        body["prompt_logprobs"] = sampling.prompt_logprobs
    return body


def _token_id(text: Any) -> int:
    m = _TOKEN.fullmatch(str(text))
    if m is None:
        raise ValueError(f"token {text!r} is not 'token_id:N' (return_tokens_as_token_ids)")
    return int(m.group(1))


def parse_completion(
    reply: dict, index: int, prompt: list[int], sampling: SamplingSpec
) -> list[Sequence]:
    """The sequences of one /v1/completions answer (vLLM 0.8.5 or later). Token ids come from
    the logprobs' "token_id:N" strings (vLLM 0.8.5 has no token_ids field), checked against
    `token_ids` where the server returns them. ValueError/KeyError/TypeError on anything else."""
    choices = reply["choices"]
    if not isinstance(choices, list) or len(choices) != sampling.n:
        raise ValueError(
            f"{len(choices) if isinstance(choices, list) else choices!r} choices "
            f"for n = {sampling.n}"
        )
    out = []
    for choice in sorted(choices, key=lambda c: c["index"]):
        lp = choice["logprobs"]
        token_ids = [_token_id(t) for t in lp["tokens"]]
        logprobs = [float(x) for x in lp["token_logprobs"]]
        if len(logprobs) != len(token_ids):
            raise ValueError(f"{len(token_ids)} tokens but {len(logprobs)} logprobs")
        if choice.get("token_ids") is not None and list(choice["token_ids"]) != token_ids:
            raise ValueError("token_ids disagree with the logprobs' tokens")
        if choice.get("prompt_token_ids") is not None and list(choice["prompt_token_ids"]) != list(
            prompt
        ):
            raise ValueError("the server changed the prompt's token ids")
        top = None
        if sampling.logprobs > 0:
            top = [
                {_token_id(t): float(v) for t, v in (pos or {}).items()}
                for pos in lp["top_logprobs"]
            ]
            if len(top) != len(token_ids):
                raise ValueError(f"{len(top)} top-logprob positions for {len(token_ids)} tokens")
        out.append(
            Sequence(
                prompt_index=index,
                sample_index=int(choice["index"]),
                prompt_token_ids=list(prompt),
                token_ids=token_ids,
                logprobs=logprobs,
                top_logprobs=top,
                finish_reason=choice.get("finish_reason"),
                text=str(choice.get("text") or ""),
                prompt_logprobs=_prompt_logprobs(choice.get("prompt_logprobs"), prompt)
                if sampling.prompt_logprobs is not None
                else None,
                num_cached_tokens=_cached_tokens(reply),
            )
        )
    return out


def _prompt_logprobs(positions: Any, prompt: list[int]) -> list[float | None]:
    """Logprob of each prompt token given the ones before it (None at position 0): vLLM
    returns per position {token_id: {"logprob": ...}} (ids as JSON keys)."""
    if not isinstance(positions, list) or len(positions) != len(prompt):
        raise ValueError(f"prompt_logprobs for {len(prompt)} prompt tokens: {positions!r:.100}")
    out: list[float | None] = []
    for tok, pos in zip(prompt, positions):
        if not pos:
            out.append(None)
            continue
        entry = pos.get(str(tok), pos.get(f"token_id:{tok}"))
        value = entry["logprob"] if isinstance(entry, dict) else entry
        out.append(float(value))
    return out


def _cached_tokens(reply: dict) -> int | None:
    details = (reply.get("usage") or {}).get("prompt_tokens_details") or {}
    value = details.get("cached_tokens")
    return value if isinstance(value, int) else None
