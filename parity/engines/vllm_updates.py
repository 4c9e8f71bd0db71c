"""Weight updates on a live vLLM engine, run inside parity's engine worker: between generate calls
or in the middle of running requests (V1 0.32: scheduler pause around `reload_weights`; V0 0.8.5:
load between LLMEngine steps), with the weight version of every sampled token."""

from __future__ import annotations

import functools
import glob
import os
import time

if __package__:  # imported as parity.engines.vllm_updates (tests)
    from parity.engines import vllm_evidence, vllm_inflight, vllm_tensors, vllm_transfer
else:  # inside the engine worker script, and the V1 workers it reaches: beside it on sys.path
    import vllm_evidence
    import vllm_inflight
    import vllm_tensors
    import vllm_transfer

# The checkpoint's value for an engine parameter (stacked parameters: their parts concatenated).
_checkpoint_value = vllm_evidence.checkpoint_value

MODES = ("keep", "wait", "abort")
VIAS = ("reload", "inplace", "tensors", "transfer")


# ----------------------------------------------------------------------------- helpers


def is_v1(llm) -> bool:
    """True for vLLM's V1 engine (vllm.v1.engine.llm_engine.LLMEngine)."""
    return type(llm.llm_engine).__module__.startswith("vllm.v1")


def _load_checkpoint(path: str) -> dict:
    """All tensors of a safetensors checkpoint directory, by checkpoint name."""
    from safetensors.torch import load_file  # lazy: safetensors.torch imports torch

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    tensors = {}
    for f in files:
        tensors.update(load_file(f))
    return tensors


def inplace_update(model, checkpoint: str) -> dict:
    """Copy a checkpoint's values into the model's parameters in place (param.data.copy_), the
    way naive RL code updates an engine. Runs where the model lives.

    Returns:
        {"copied": n, "skipped": [(name, why)], "missing": [names]}: parameters whose storage no
        longer has the checkpoint's shape (e.g. emptied by a load-time repack) are skipped.
    """
    import torch  # lazy: torch takes seconds to import

    tensors = _load_checkpoint(checkpoint)
    packed = dict(getattr(model, "packed_modules_mapping", None) or {})
    copied, skipped, missing = 0, [], []
    with torch.no_grad():
        for name, param in model.named_parameters():
            new = _checkpoint_value(name, tensors, packed)
            if new is None:
                missing.append(name)
            elif tuple(param.shape) != tuple(new.shape):
                skipped.append(
                    (name, f"engine shape {tuple(param.shape)}, checkpoint {tuple(new.shape)}")
                )
            else:
                param.data.copy_(new.to(param.dtype))
                copied += 1
    return {"copied": copied, "skipped": skipped, "missing": missing}


def _inplace_on_worker(worker, checkpoint: str) -> dict:
    """collective_rpc target on V1 workers: in-place update of the worker's model."""
    return inplace_update(worker.get_model(), checkpoint)


def load_into_model(model, checkpoint: str) -> dict:
    """V0's update path (as PipelineRL ran it): the model's own load_weights over the
    checkpoint's named tensors, which handles stacked parameters and dtype."""
    loaded = model.load_weights(iter(_load_checkpoint(checkpoint).items()))
    return {"loaded": len(loaded) if loaded is not None else None}


def _v1_core(llm):
    return llm.llm_engine.engine_core


def core_call(llm, method: str, *args):
    """A V1 engine-core utility (pause_scheduler, resume_scheduler, set_weight_version): through
    the client's call_utility when the core runs in its own process (vLLM's default), on the
    EngineCore itself when it runs in this one (VLLM_ENABLE_V1_MULTIPROCESSING=0: its client
    has no call_utility; vLLM refuses pause mode "wait" there, and that error is the answer)."""
    client = _v1_core(llm)
    call = getattr(client, "call_utility", None)
    if call is not None:
        return call(method, *args)
    return getattr(client.engine_core, method)(*args)


# ----------------------------------------------------------------------------- the update


class Updater:
    """Weight updates of one engine (`host.llm`), keeping `host.weight_version` (an int, +1 per
    update) and `host.checkpoint` (None = the weights the engine started with) current."""

    def __init__(self, host, bucket_mb: float | None = None, backend: str | None = None):
        self.host = host
        # via tensors / transfer: MiB per load_weights call (vllm_tensors.DEFAULT_BUCKET_MB if
        # None); via transfer: vLLM's weight-transfer backend (vllm_transfer)
        self.bucket_mb = bucket_mb or vllm_tensors.DEFAULT_BUCKET_MB
        self.backend = backend

    @property
    def llm(self):
        return self.host.llm

    def _load(self, checkpoint: str, via: str) -> dict:
        """Load the weights (the engine must be paused or idle); returns what was done."""
        llm = self.llm
        if via == "inplace":
            if is_v1(llm):
                # Functions reach V1 workers pickled by reference: this module must be importable
                # there (the worker's directory is on sys.path) and VLLM_ALLOW_INSECURE_
                # SERIALIZATION set (the harness sets it).
                out = llm.collective_rpc(_inplace_on_worker, args=(checkpoint,))[0]
            else:
                out = llm.apply_model(functools.partial(inplace_update, checkpoint=checkpoint))[0]
            return {"mechanism": "param.data.copy_ into the live parameters", **out}
        if via == "tensors":
            return vllm_tensors.load(llm, checkpoint, self.bucket_mb, is_v1(llm))
        if via == "transfer":
            return vllm_transfer.load(llm, checkpoint, self.backend, self.bucket_mb, is_v1(llm))
        if is_v1(llm):
            llm.collective_rpc("reload_weights", kwargs={"weights_path": checkpoint})
            return {"mechanism": "collective_rpc('reload_weights', weights_path=...)"}
        out = llm.apply_model(functools.partial(load_into_model, checkpoint=checkpoint))[0]
        return {"mechanism": "model.load_weights(checkpoint tensors) between engine steps", **out}

    def _evidence(self, checkpoint: str, via: str) -> dict:
        """What the update reached, checked where the model lives (vllm_evidence.collect): the
        record's evidence (or evidence_error), and with parity's reload workaround on
        (PARITY_RELOAD_REPROCESS, reported as patches["reload_reprocess"]) after a reload or a
        tensors push (the same layer-wise reload), the compute_stale modules re-processed: reprocessed, reprocess_s, evidence_before_reprocess.
        evidence_s: the checks' time (the call's, less reprocess_s). Never raises."""
        llm = self.llm
        fix = via in ("reload", "tensors", "transfer") and bool(
            getattr(self.host, "patches", {}).get("reload_reprocess")
        )
        t0 = time.perf_counter()
        try:
            if is_v1(llm):
                out = llm.collective_rpc(vllm_evidence.collect_on_worker, args=(checkpoint, fix))[0]
            else:
                out = llm.apply_model(
                    functools.partial(
                        vllm_evidence.collect, checkpoint=checkpoint, reprocess_stale=fix
                    )
                )[0]
        except Exception as exc:  # the evidence must never break the update
            out = {"evidence_error": f"{type(exc).__name__}: {exc}"[:500]}
        out = dict(out)
        out["evidence_s"] = time.perf_counter() - t0 - out.get("reprocess_s", 0.0)
        return out

    def _committed(self, checkpoint: str, via: str) -> int:
        self.host.weight_version = getattr(self.host, "weight_version", 0) + 1
        self.host.checkpoint = checkpoint
        self.host.update_via = via
        return self.host.weight_version

    def update(
        self, checkpoint: str, mode: str = "keep", clear_cache: bool = False, via: str = "reload"
    ) -> dict:
        """Update between generate calls (nothing in flight).

        Returns the update record: version (the new one), version_before, via, mechanism,
        cache_cleared, the timings pause_s, load_s, resume_s, latency_s, and what the update
        reached (evidence, evidence_s; see _evidence).
        """
        _check(mode, via)
        rec = {
            "via": via,
            "mode": mode,
            "clear_cache": clear_cache,
            "checkpoint": checkpoint,
            "version_before": self.version,
        }
        rec.update(self._swap(checkpoint, mode, clear_cache, via))
        return rec

    def _swap(self, checkpoint: str, mode: str, clear_cache: bool, via: str) -> dict:
        """Pause, load, check, label, resume. V1: the engine core's pause_scheduler(mode,
        clear_cache) (the call AsyncLLM.pause_generation makes), the load, the evidence check
        (and the reload workaround, if on), the new version label (set while paused, so every
        later token carries it), resume_scheduler. V0: nothing runs between two LLMEngine.step()
        calls: load, check, then reset the prefix cache if asked. latency_s is the update as
        a user has it: pause_s + load_s + reprocess_s + resume_s, without parity's checks
        (evidence_s)."""
        llm = self.llm
        v1 = is_v1(llm)
        t0 = time.perf_counter()
        if v1:
            core_call(llm, "pause_scheduler", mode, clear_cache)
        t1 = time.perf_counter()
        rec = self._load(checkpoint, via)
        t2 = time.perf_counter()
        rec.update(self._evidence(checkpoint, via))
        t3 = time.perf_counter()
        version = self._committed(checkpoint, via)
        if v1:
            core_call(llm, "set_weight_version", str(version))
            core_call(llm, "resume_scheduler")
            rec["cache_cleared"] = bool(clear_cache)
        else:
            # V0 can only drop cached blocks no running request holds: requests kept in flight
            # keep their KV (that is what "keep" means) and the reset then reports False.
            rec["cache_cleared"] = self._v0_reset_cache() if clear_cache else False
        t4 = time.perf_counter()
        fix_s = rec.get("reprocess_s", 0.0)
        rec.update(
            version=version,
            pause_s=t1 - t0,
            load_s=t2 - t1,
            resume_s=t4 - t3,
            latency_s=(t2 - t0) + fix_s + (t4 - t3),
        )
        try:  # the engine log's line; a report line must never fail the update
            print(
                f"parity: update {via} v{version} latency {1000 * rec['latency_s']:.1f} ms "
                f"(load {1000 * rec['load_s']:.1f} ms); evidence: {_evidence_line(rec)}",
                flush=True,
            )
        except Exception:
            pass
        return rec

    @property
    def version(self) -> int:
        return getattr(self.host, "weight_version", 0)

    def _v0_reset_cache(self) -> bool:
        engine = self.llm.llm_engine
        if not getattr(engine.cache_config, "enable_prefix_caching", False):
            return False
        return bool(engine.reset_prefix_cache())

    # ------------------------------------------------------------------------- in flight

    def generate_with_update(
        self,
        prompts: list,
        sampling: dict,
        checkpoint: str,
        after_tokens: int,
        mode: str = "keep",
        clear_cache: bool = False,
        via: str = "reload",
        ignore_eos: bool = False,
    ) -> dict:
        """Generate, updating the weights once every running request has sampled at least
        `after_tokens` tokens (requests already finished count as done).

        Returns {"sequences": [...], "update": record}: sequences as the worker's generate op
        returns them, with per-token `weight_versions` (V1: the engine's own labels, set while
        paused; V0: counted by this step loop); the record adds seen_at_request (tokens per
        sequence when the update was requested), lag_tokens (tokens sampled under the old
        weights after that) and the timings.
        """
        _check(mode, via)
        llm = self.llm
        engine = llm.llm_engine
        v1 = is_v1(llm)
        old = self.version
        if v1:
            core_call(llm, "set_weight_version", str(old))
        ids = [f"parity-upd-{old}-{i}" for i in range(len(prompts))]
        for i, (rid, prompt) in enumerate(zip(ids, prompts)):
            engine.add_request(
                rid,
                {"prompt_token_ids": list(prompt)},
                vllm_inflight.sampling_params(sampling, i, ignore_eos),
            )
        track = vllm_inflight.Tracker(old)
        seen_at_request: dict | None = None
        rec: dict = {
            "via": via,
            "mode": mode,
            "clear_cache": clear_cache,
            "checkpoint": checkpoint,
            "after_tokens": after_tokens,
            "version_before": old,
        }
        t_start = time.perf_counter()
        while engine.has_unfinished_requests():
            track.add(engine.step())
            if seen_at_request is None and track.ready(ids, sampling["n"], after_tokens):
                seen_at_request = track.counts()
                rec["requested_after_s"] = time.perf_counter() - t_start
                rec.update(
                    self._update_in_flight(ids, track, checkpoint, mode, clear_cache, via, v1)
                )
                track.current = self.version
        if seen_at_request is None:  # every request finished before the trigger
            rec.update(self.update(checkpoint, mode, clear_cache, via))
            rec["note"] = "every request finished before after_tokens: updated afterwards"
            seen_at_request = track.counts()
        sequences = []
        for i, rid in enumerate(ids):
            out = track.latest[rid]
            for c in out.outputs:
                own = track.versions.get((rid, c.index), [])
                labels = vllm_inflight.span_versions(
                    getattr(c, "weight_versions", None), len(c.token_ids)
                )
                seq = vllm_inflight.sequence(i, out, c, sampling["logprobs"] > 0)
                seq["weight_versions"] = labels if labels is not None else own
                seq["weight_version_source"] = "engine" if labels is not None else "harness"
                seq["seen_at_request"] = seen_at_request.get((rid, c.index), 0)
                if seq["finish_reason"] is None:  # V0 returns nothing more for aborted requests
                    seq["finish_reason"] = "abort"
                sequences.append(seq)
        lags = [
            sum(1 for v in s["weight_versions"] if v == old) - s["seen_at_request"]
            for s in sequences
        ]
        rec["lag_tokens"] = lags
        rec["version"] = self.version
        return {
            "sequences": sequences,
            "update": rec,
            "n_tokens": sum(len(s["token_ids"]) for s in sequences),
        }

    def _update_in_flight(self, ids, track, checkpoint, mode, clear_cache, via, v1) -> dict:
        """The update with requests running. V1's pause applies the mode itself; V0 stops at
        this step boundary: keep = load now, wait = step the running requests to completion
        first, abort = abort them first (that time counts as pause time)."""
        t0 = time.perf_counter()
        if not v1:
            engine = self.llm.llm_engine
            if mode == "wait":
                while engine.has_unfinished_requests():
                    track.add(engine.step())
            elif mode == "abort":
                engine.abort_request([rid for rid in ids if not track.latest[rid].finished])
        drained = time.perf_counter() - t0
        rec = self._swap(checkpoint, mode, clear_cache, via)
        rec["pause_s"] += drained
        rec["latency_s"] += drained
        return rec


def _evidence_line(out: dict) -> str:
    """One line for the engine log: what the update reached."""
    ev = out.get("evidence")
    if ev is None:
        return f"error: {out.get('evidence_error')}"
    text = (
        f"{ev['ok']}/{ev['modules_checked']} modules compute the checkpoint; compute_stale "
        f"{ev['compute_stale']}, param_stale {ev['param_stale']}, skipped "
        f"{ev['skipped_total']}, {out['evidence_s']:.3f} s"
    )
    if "reprocessed" in out:
        before = (out.get("evidence_before_reprocess") or ev)["compute_stale"]
        text += (
            f"; PARITY_RELOAD_REPROCESS: compute_stale before {before}, reprocessed "
            f"{out['reprocessed']} in {out['reprocess_s']:.3f} s"
        )
    return text


def _check(mode: str, via: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if via not in VIAS:
        raise ValueError(f"via must be one of {VIAS}, got {via!r}")
