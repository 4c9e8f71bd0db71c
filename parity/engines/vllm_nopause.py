"""A weight update pushed while the engine keeps generating, with no pause or resume (the nopause
probe), inside parity's engine worker. Requests start; once each has sampled `after_tokens`
tokens the new weights go in, bucket by bucket, and `late` requests arrive after the trigger.

V1 (0.32): each bucket is one `collective_rpc("reload_weights", weights_iterator=...)` (the
in-memory path an NCCL/IPC broadcast ends in), pushed between two engine steps: one bucket per
step, the way a broadcast interleaves with the async engine's steps, so the steps in between
sample from hybrid weights. With an in-process engine core (VLLM_ENABLE_V1_MULTIPROCESSING=0)
this step loop is the engine's scheduling loop and the placement is exact; with a core process
the core keeps stepping on its own between two calls. V0 (0.8.5): the update blocks the engine,
as it did in PipelineRL: every bucket loads between the same two LLMEngine.step() calls, and
the late requests wait for it.

Every token is labelled with the weight state of the step that sampled it (0 = old, j = the
first j buckets new, B = new); V1's own labels (set_weight_version "0".."B") come back beside
them. Standard library at import time, vLLM and torch lazily."""

from __future__ import annotations

import functools
import time

if __package__:  # imported as parity.engines.vllm_nopause (tests)
    from parity.engines import vllm_evidence, vllm_inflight, vllm_updates
else:  # inside the engine worker script: beside it on sys.path
    import vllm_evidence
    import vllm_inflight
    import vllm_updates


def bucket_tensors(checkpoint: str, prefixes: list[str]) -> list:
    """A checkpoint directory's (name, tensor) pairs whose names start with one of `prefixes`,
    read from its safetensors files (only those tensors)."""
    ckpt = vllm_evidence.Checkpoint(checkpoint)
    return [(n, ckpt[n]) for n in ckpt.keys() if n.startswith(tuple(prefixes))]


def load_bucket(model, checkpoint: str, prefixes: list[str]) -> int:
    """V0's load of one bucket: the model's load_weights over its tensors. Returns how many."""
    pairs = bucket_tensors(checkpoint, prefixes)
    model.load_weights(iter(pairs))
    return len(pairs)


def push_on_worker(worker, checkpoint: str, prefixes: list[str], reprocess: bool) -> dict:
    """collective_rpc target on V1 workers: one bucket, between two engine steps. Records how many
    tokens each running request had sampled when it landed (the model runner's requests: the
    tokens from that index on are sampled with it), reloads the bucket's tensors (read where the
    worker is) through the worker's reload_weights(weights_iterator=...) (the in-memory path a
    broadcast ends in), and with parity's reload workaround re-processes what the reload left
    computing old weights (a tied head). One call, so no step runs between the record and the
    load whether the engine core runs in this process or in its own."""
    seen = {rid: len(st.output_token_ids) for rid, st in worker.model_runner.requests.items()}
    pairs = bucket_tensors(checkpoint, prefixes)
    worker.reload_weights(weights_iterator=iter(pairs))
    if reprocess:
        vllm_evidence.collect(worker.get_model(), checkpoint, True)
    return {"tokens_at_push": seen, "tensors": len(pairs)}


def own_id(internal: str, ids: set) -> str | None:
    """The request id parity gave for vLLM's internal one (V1 appends "-<8 hex>")."""
    if internal in ids:
        return internal
    base = internal.rsplit("-", 1)[0]
    return base if base in ids else None


def states_from_pushes(tokens: int, pushes: list[dict], rid: str) -> list[int]:
    """The state of each of a request's `tokens` tokens from the V1 pushes' records: a push
    counts for token i when the request had sampled at most i tokens as it landed; a request the
    workers did not hold then had either finished (its first token seen before the push: the
    push comes after all of them) or not started (every token comes after the push)."""
    out = []
    for i in range(tokens):
        state = 0
        for p in pushes:
            n = p["at"].get(rid)
            if n is None:
                n = tokens if rid in p["started"] else 0
            state += i >= n
        out.append(state)
    return out


class NoPause:
    """The nopause probe on one engine (an Updater's host: its version and checkpoint kept)."""

    def __init__(self, updater):
        self.up = updater
        self.llm = updater.llm
        self.v1 = vllm_updates.is_v1(self.llm)

    def _label(self, version: str) -> None:
        """V1's weight-version label for the tokens that follow."""
        vllm_updates.core_call(self.llm, "set_weight_version", version)

    def _push(self, prefixes: list, state: int, track, ids: list, checkpoint: str) -> dict:
        """One bucket into the live engine; V1: with what each request had sampled as it
        landed (push_on_worker), then the engine's own label for the tokens that follow."""
        t0 = time.perf_counter()
        out: dict = {"state": state}
        if self.v1:
            fix = bool(getattr(self.up.host, "patches", {}).get("reload_reprocess"))
            got = self.llm.collective_rpc(push_on_worker, args=(checkpoint, prefixes, fix))[0]
            out["tensors"] = got["tensors"]
            own = set(ids)
            at = {own_id(k, own): v for k, v in got["tokens_at_push"].items()}
            out["at"] = {k: v for k, v in at.items() if k is not None}
            out["started"] = [rid for rid in ids if rid in track.latest]
            self._label(str(state))
        else:
            out["tensors"] = self.llm.apply_model(
                functools.partial(load_bucket, checkpoint=checkpoint, prefixes=prefixes)
            )[0]
        out["load_s"] = time.perf_counter() - t0
        return out

    def generate(
        self,
        prompts: list,
        sampling: dict,
        checkpoint: str,
        after_tokens: int,
        buckets: list[list[str]],
        late: int = 0,
        ignore_eos: bool = False,
        pause: str | None = None,
        clear_cache: bool = False,
    ) -> dict:
        """Generate `prompts` (the last `late` of them added after the trigger), pushing the
        `buckets` (checkpoint name prefixes each) once every early request has sampled
        `after_tokens` tokens: without a pause, or (the control) with `pause` = "wait" (the
        running requests finish first, as pause_generation(mode="wait") lets them) or "keep"
        (paused where they are), the whole checkpoint at once, the prefix cache cleared if
        `clear_cache`.

        Returns {"sequences", "update", "n_tokens"}: sequences as the worker's generate op
        returns them, `weight_versions` = the weight state of each token (0 old, j the first j
        buckets new: V0 from this loop, V1 from what the workers held at each push, or V1's
        own labels for the paused control) and `engine_states` (V1's own labels); the record:
        version_before, version, n_buckets, pushes (state, tensors, load_s, step: engine steps
        this loop had read before it), trigger_step, steps, late (prompt indices), engine_labels
        (V1's labels against the states), latency_s and the evidence after the last push.
        """
        engine, early = self.llm.llm_engine, len(prompts) - late
        n_b = 1 if pause else len(buckets)
        old = self.up.version
        if self.v1:
            self._label("0")
        ids = [f"parity-nopause-{old}-{i}" for i in range(len(prompts))]
        reqs = [
            (
                rid,
                {"prompt_token_ids": list(p)},
                vllm_inflight.sampling_params(sampling, i, ignore_eos),
            )
            for i, (rid, p) in enumerate(zip(ids, prompts))
        ]
        for req in reqs[:early]:
            engine.add_request(*req)
        track = vllm_inflight.Tracker(0)
        rec: dict = {"checkpoint": checkpoint, "version_before": old, "n_buckets": n_b}
        pushes: list[dict] = []
        steps, seen = 0, None

        def push(j: int) -> None:
            pushes.append({**self._push(buckets[j], j + 1, track, ids, checkpoint), "step": steps})

        while True:
            if seen is not None and len(pushes) < n_b:
                if pause:
                    rec.update(self._paused(track, checkpoint, pause, clear_cache))
                    pushes.append({"state": 1, "load_s": rec["load_s"], "step": steps})
                else:  # V1: one bucket between two engine steps; V0: all of them now
                    for j in range(len(pushes), len(pushes) + 1 if self.v1 else n_b):
                        push(j)
                if track.current == 0:  # the late requests arrive after the trigger
                    for req in reqs[early:]:
                        engine.add_request(*req)
                track.current = len(pushes)
            if not engine.has_unfinished_requests():
                break
            track.add(engine.step())
            steps += 1
            if seen is None and track.ready(ids[:early], sampling["n"], after_tokens):
                seen, rec["trigger_step"] = track.counts(), steps
        for j in range(len(pushes), n_b if seen is not None and not pause else 0):
            push(j)  # every request finished before the last buckets
        rec.update(self._finish(checkpoint, pushes, steps, pause))
        sequences = self._sequences(ids, track, seen or {}, sampling, pushes, pause)
        rec["engine_labels"] = engine_labels(sequences)
        rec["late"] = list(range(early, len(prompts)))
        for p in pushes:  # per-request records: their sum is enough for the report
            p["requests_held"] = len(p.pop("at", {}) or {})
            p.pop("started", None)
        return {
            "sequences": sequences,
            "update": rec,
            "n_tokens": sum(len(s["token_ids"]) for s in sequences),
        }

    def _paused(self, track, checkpoint: str, mode: str, clear_cache: bool) -> dict:
        """The control: the update with a pause, the whole checkpoint at once (Updater._swap:
        V1's pause_scheduler, reload, label, resume; V0 between two steps). "wait": the running
        requests step to completion first while the late ones are held back, as
        pause_generation's wait mode does (this loop drains them: an in-process V1 core refuses
        that mode)."""
        t0 = time.perf_counter()
        if mode == "wait":
            engine = self.llm.llm_engine
            while engine.has_unfinished_requests():
                track.add(engine.step())
        drained = time.perf_counter() - t0
        out = self.up._swap(checkpoint, "keep" if mode == "wait" else mode, clear_cache, "reload")
        return {**out, "pause_s": out["pause_s"] + drained, "mode": f"pause {mode}"}

    def _finish(self, checkpoint: str, pushes: list, steps: int, pause) -> dict:
        """The record's tail: the version bump, the evidence against the full checkpoint."""
        out: dict = {"pushes": pushes, "steps": steps, "via": "reload"}
        if pause:
            return out
        out.update(
            latency_s=sum(p["load_s"] for p in pushes),
            load_s=sum(p["load_s"] for p in pushes),
            pause_s=0.0,
            mode="nopause",
            mechanism=(
                "collective_rpc(worker.reload_weights(weights_iterator=bucket)) between two "
                "engine steps, one bucket per call"
                if self.v1
                else "model.load_weights(bucket) for every bucket between the same two steps"
            ),
        )
        if pushes:
            out.update(self.up._evidence(checkpoint, "reload"))
            out["version"] = self.up._committed(checkpoint, "reload")
        return out

    def _sequences(self, ids, track, seen: dict, sampling: dict, pushes, pause) -> list[dict]:
        """The sequences with their per-token states (see generate) and V1's own labels."""
        out = []
        for i, rid in enumerate(ids):
            req = track.latest.get(rid)
            if req is None:
                continue
            for c in req.outputs:
                seq = vllm_inflight.sequence(i, req, c, sampling["logprobs"] > 0)
                labels = vllm_inflight.span_versions(
                    getattr(c, "weight_versions", None), len(c.token_ids)
                )
                if self.v1 and pause and labels is not None:  # set while paused: exact
                    states = [int(v != 0) for v in labels]
                    labels = states
                elif self.v1 and not pause:
                    states = states_from_pushes(len(c.token_ids), pushes, rid)
                else:
                    states = track.versions.get((rid, c.index), [])
                seq["weight_versions"] = states
                seq["engine_states"] = labels
                seq["seen_at_request"] = seen.get((rid, c.index), 0)
                out.append(seq)
        return out


def engine_labels(sequences: list[dict]) -> dict:
    """Tokens whose V1 engine label agrees with this loop's state, differs, or is absent."""
    out = {"agree": 0, "differ": 0, "absent": 0}
    for s in sequences:
        theirs = s.get("engine_states")
        if theirs is None:
            out["absent"] += len(s["weight_versions"])
            continue
        for a, b in zip(s["weight_versions"], theirs):
            out["agree" if a == b else "differ"] += 1
    return out
