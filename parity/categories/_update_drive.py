"""The engine side of category weight_update: a probe run on a live engine (generate, push new
weights, generate; or the update mid-generation), the engine returned to the scenario's model
afterwards."""

from __future__ import annotations

from dataclasses import replace

from parity.trainer import schedules
from parity.trainer.update_spec import UpdateSpec
from parity.trainer.updates import pushed_path, shared_context, target_path


def block_size(er) -> int:
    raw = (er.effective_config or {}).get("raw") or {}
    # A served engine's sections sit under its /server_info dump.
    cache = raw.get("cache_config") or (raw.get("server_info") or {}).get("cache_config") or {}
    return int(cache.get("block_size") or 16)


def drive(engine, res, role: str, prompts: list[list[int]], log) -> None:
    """Run the scenario's probe on a live engine; fills res.runs[role] (sequences after the
    update; extra: before-update sequences, the update record, the target checkpoint). The
    engine is returned to the scenario's model afterwards, for the scenarios that follow."""
    sc, er = res.scenario, res.runs[role]
    base = res.model_path
    target = target_path(sc, base, log)
    pushed = pushed_path(sc, target, base, log)  # what the engine is sent (a control: partial)
    er.extra.update(target=target, pushed=pushed, probe=sc.options["probe"])
    if getattr(engine, "checkpoint", None) not in (None, base):
        engine.update_weights(base, clear_cache=True)  # a previous scenario left other weights
    try:
        _probe(engine, sc, er, prompts, pushed, log)
    except BaseException:
        try:  # keep the original error; the engine may be gone
            engine.update_weights(base, clear_cache=True)
        except Exception:
            pass
        raise
    engine.update_weights(base, clear_cache=True)


def _probe(engine, sc, er, prompts: list[list[int]], target: str, log) -> None:
    """The engine work of one probe: generate, update, generate (or all at once in flight)."""
    spec: UpdateSpec = sc.options["update"]
    if sc.options["probe"] == "nopause":
        buckets = schedules.layout(schedules.n_layers(target), spec.buckets)
        seqs, rec = engine.generate_nopause(
            prompts,
            sc.sampling,
            target,
            spec.after_tokens,
            [schedules.prefixes(b) for b in buckets],
            min(spec.late_prompts, len(prompts) - 1),
            spec.ignore_eos,
            spec.mode if spec.pause else None,
            spec.clear_cache,
        )
        rec["bucket_components"] = buckets
        er.sequences = seqs
    elif sc.options["probe"] == "inflight":
        if sc.sampling.seed is not None:
            # The same seeded requests without a pause, just past the update point: the
            # paused streams must continue them token for token (nothing lost or repeated).
            short = replace(
                sc.sampling, max_tokens=min(sc.sampling.max_tokens, spec.after_tokens + 4)
            )
            er.extra["uninterrupted"] = engine.generate(prompts, short)
        seqs, rec = engine.generate_with_update(
            prompts,
            sc.sampling,
            target,
            spec.after_tokens,
            spec.mode,
            spec.clear_cache,
            spec.via,
            spec.ignore_eos,
            **spec.transport(),
        )
        er.sequences = seqs
    else:
        if sc.options["probe"] == "stale_cache":
            n = spec.context_tokens if spec.context_tokens is not None else block_size(er)
            context = shared_context(prompts, n)
            prompts = [context + p for p in prompts]
            er.extra["context_tokens"] = len(context)
        er.extra["before"] = engine.generate(prompts, sc.sampling)
        rec = engine.update_weights(
            target, spec.mode, spec.clear_cache, spec.via, **spec.transport()
        )
        er.sequences = engine.generate(prompts, sc.sampling)
    er.extra["update"] = rec
    log(
        f"  update {rec.get('version_before')} -> {rec.get('version')} via {spec.via}: "
        f"{1000 * rec.get('latency_s', float('nan')):.1f} ms"
    )


def transfer_setting_problems(scenario, path: str) -> list[tuple[str, str, str]]:
    """update.via = "transfer" needs the candidate engine started with vLLM's weight-transfer
    engine for update.backend (engine_args.weight_transfer_config = { backend = ... })."""
    spec = scenario.options.get("update")
    if spec is None or spec.via != "transfer":
        return []
    out = []
    for role, setting in scenario.settings().items():
        wtc = setting.args.get("weight_transfer_config")
        got = wtc.get("backend") if isinstance(wtc, dict) else None
        if got != spec.backend:
            out.append(
                (
                    path,
                    f"{role}.engine_args.weight_transfer_config",
                    f'update.via = "transfer" over {spec.backend!r} needs the engine started '
                    f'with it: weight_transfer_config = {{ backend = "{spec.backend}" }}'
                    + (f" (got backend {got!r})" if got is not None else ""),
                )
            )
    return out
