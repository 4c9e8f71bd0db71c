"""The step loop of a generate with a weight update in flight, inside parity's engine worker: each
request's sampling parameters, the weight version of every token as the loop sees it (or as V1's
spans label it), and the sequences it returns. Standard library at import time, vLLM lazily."""

from __future__ import annotations


def sampling_params(sampling: dict, index: int, ignore_eos: bool):
    from vllm import SamplingParams  # lazy: vLLM, only in an engine's interpreter

    kwargs = dict(
        n=sampling["n"],
        temperature=sampling["temperature"],
        top_p=sampling["top_p"],
        top_k=sampling["top_k"] if sampling["top_k"] > 0 else -1,
        max_tokens=sampling["max_tokens"],
        logprobs=sampling["logprobs"],
        ignore_eos=ignore_eos,
    )
    if sampling.get("seed") is not None:
        kwargs["seed"] = sampling["seed"] + index
    return SamplingParams(**kwargs)


class Tracker:
    """What a step loop has seen: the latest output of each request and, per completion, the
    weight version current when each of its tokens arrived."""

    def __init__(self, current: int):
        self.current = current
        self.latest: dict = {}
        self.versions: dict = {}

    def add(self, outputs) -> None:
        for out in outputs:
            self.latest[out.request_id] = out
            for c in out.outputs:
                seq = self.versions.setdefault((out.request_id, c.index), [])
                seq += [self.current] * (len(c.token_ids) - len(seq))

    def counts(self) -> dict:
        return {k: len(v) for k, v in self.versions.items()}

    def ready(self, ids, n: int, after_tokens: int) -> bool:
        """Every request has sampled after_tokens tokens in each completion, or finished."""
        for rid in ids:
            out = self.latest.get(rid)
            if out is None:
                return False
            if out.finished:
                continue
            if len(out.outputs) < n or min(len(c.token_ids) for c in out.outputs) < after_tokens:
                return False
        return True


def span_versions(spans, n_tokens: int):
    """Per-token int versions from V1's WeightVersionSpan list (None when absent or not ints)."""
    if not spans:
        return None
    out = []
    try:
        for span in spans:
            out += [int(span.version)] * (span.end - span.start)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n_tokens else None


def sequence(prompt_index: int, request, completion, with_top: bool) -> dict:
    token_ids = list(completion.token_ids)
    logprobs, top = [], []
    for tok, pos in zip(token_ids, completion.logprobs or []):
        logprobs.append(float(pos[tok].logprob))
        top.append({str(t): float(lp.logprob) for t, lp in pos.items()})
    return {
        "prompt_index": prompt_index,
        "sample_index": completion.index,
        "prompt_token_ids": list(request.prompt_token_ids),
        "token_ids": token_ids,
        "logprobs": logprobs,
        "top_logprobs": top if with_top else None,
        "finish_reason": completion.finish_reason,
        "text": completion.text,
        "num_cached_tokens": getattr(request, "num_cached_tokens", None),
    }
