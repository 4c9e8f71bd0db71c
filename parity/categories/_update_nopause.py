"""The nopause probe of category weight_update, judged: every token's weight state (its label:
old, a hybrid of old and new buckets, new), the tokens that came from mixed weights counted
(parity.verdicts.mixing), and the engine's logprobs checked against the trainer replaying each
sequence under the states its labels give (parity.trainer.schedules: hybrids of the old and new
checkpoints), beside the all-old and all-new predictions."""

from __future__ import annotations

import numpy as np

from parity.categories._update_judging import batched, decide, gap, mean, threshold
from parity.trainer.schedules import ScheduleScorer
from parity.verdicts import core
from parity.verdicts.fmt import fmt
from parity.verdicts.mixing import MixCount, is_mixed

FIX = (
    "pause generation around the update (pause_generation, mode wait) or update between "
    "batches: without it, tokens are sampled from a mix of old and new weights"
)


def judge_nopause(sc, er, scorer, tol: float, detail: dict, pre: list) -> core.Verdict:
    """nopause: count the tokens sampled from mixed weights (at most update.mixed_tokens_limit)
    and check that the engine computed what its labels say (mean |dlogp| to the labelled
    replay within the tolerance)."""
    spec, rec = sc.options["update"], er.extra.get("update") or {}
    seqs = er.sequences
    buckets = rec.get("bucket_components") or [[]]
    n_b = int(rec.get("n_buckets") or len(buckets))
    if n_b != len(buckets):  # the paused control pushes the whole checkpoint at once
        buckets = [[c for b in buckets for c in b]]
    states = [list(s.weight_versions or []) for s in seqs]
    count, late_count = MixCount(n_b), MixCount(n_b)
    late = set(rec.get("late") or [])
    cached = [s.num_cached_tokens or 0 for s in seqs]
    kinds = []
    for s, st, c in zip(seqs, states, cached):
        kinds.append(count.add(st, c))
        if s.prompt_index in late:
            late_count.add(st, c)
    replay = ScheduleScorer(scorer, buckets)
    try:
        labelled = [
            replay.score(s.prompt_token_ids, s.token_ids, st, sc.sampling, c)
            for s, st, c in zip(seqs, states, cached)
        ]
        hybrid_gaps = _hybrid_vs_atomic(replay, seqs, states, cached, labelled, n_b, sc.sampling)
    finally:
        replay.close()
    pairs = [(s.prompt_token_ids, s.token_ids) for s in seqs]
    batch = batched(scorer)
    olds, news = batch.old_many(pairs, sc.sampling), batch.new_many(pairs, sc.sampling)
    eng = [np.asarray(s.logprobs, dtype=np.float64) for s in seqs]
    gaps = {**_gaps(eng, labelled, olds, news, kinds), **hybrid_gaps}
    pre.append(
        core.at_least(
            "updated_tokens",
            count.total - count.by_kind["old"],
            1,
            "every request finished before the update: raise max_tokens or lower after_tokens",
        )
    )
    findings = [
        threshold("abs_dlogp_vs_labels", gap(eng, labelled), tol),
        core.count_limit(
            "mixed_weight_tokens",
            count.mixed,
            spec.mixed_tokens_limit,
            count.total,
            note=f"{count.mixed} token(s) sampled from mixed weights: {count.by_kind['hybrid']} "
            f"under hybrid weights (some buckets new), {count.by_kind['new_on_old_kv']} under "
            "the new weights over KV the old weights computed",
        ),
    ]
    detail.update(
        mixing=count.to_dict(),
        mixing_late=late_count.to_dict(),
        gaps=gaps,
        engine_labels=rec.get("engine_labels"),
        exact_placement=rec.get("exact_placement"),
        pushes=rec.get("pushes"),
        mode=rec.get("mode"),
        prompt_tokens_from_cache=sum(cached),
    )
    return _verdict(count, late_count, gaps, tol, findings, pre)


def _gaps(eng, labelled, olds, news, kinds) -> dict:
    """Mean |dlogp| of the engine to the labelled replay, the old and the new weights: over all
    tokens and over the mixed ones; and of the other (clean) tokens to their labels."""
    mixed = [np.array([is_mixed(k) for k in ks], dtype=bool) for ks in kinds]

    def pick(per_seq, masks):
        return [x[m] for x, m in zip(per_seq, masks)]

    out = {}
    for name, ref in (("labels", labelled), ("old", olds), ("new", news)):
        g = gap(eng, ref)
        out[f"all_vs_{name}"] = mean(g)
        out[f"mixed_vs_{name}"] = mean(pick(g, mixed))
    out["clean_vs_labels"] = mean(pick(gap(eng, labelled), [~m for m in mixed]))
    return out


def _hybrid_vs_atomic(replay, seqs, states, cached, labelled, n_b: int, sampling) -> dict:
    """The tokens sampled under hybrid states: mean |dlogp| of the engine to their labelled
    hybrid, and to the update applied whole at its first bucket (every hybrid state read as the
    new weights): whether the buckets matter, beside new weights over old KV."""
    idx = [i for i, st in enumerate(states) if any(0 < x < n_b for x in st)]
    if not idx:
        return {"hybrid_vs_labels": None, "hybrid_vs_atomic": None}
    eng, lab, atomic = [], [], []
    for i in idx:
        whole = [n_b if x > 0 else 0 for x in states[i]]
        mask = np.array([0 < x < n_b for x in states[i]])
        pred = replay.score(seqs[i].prompt_token_ids, seqs[i].token_ids, whole, sampling, cached[i])
        eng.append(np.asarray(seqs[i].logprobs, dtype=np.float64)[mask])
        lab.append(labelled[i][mask])
        atomic.append(pred[mask])
    return {"hybrid_vs_labels": mean(gap(eng, lab)), "hybrid_vs_atomic": mean(gap(eng, atomic))}


def _verdict(count: MixCount, late: MixCount, gaps: dict, tol: float, findings, pre):
    by_name = {f.name: f for f in findings}
    labels, mixed = by_name["abs_dlogp_vs_labels"], by_name["mixed_weight_tokens"]
    text = (
        f"{count.mixed} of {count.total} tokens sampled from mixed weights (hybrid "
        f"{count.by_kind['hybrid']}, new weights over old KV {count.by_kind['new_on_old_kv']}; "
        f"{count.sequences_mixed} of {count.sequences} sequences; requests arriving after the "
        f"update started: {late.mixed} of {late.total} tokens mixed); mean |dlogp| of the mixed "
        f"tokens to the old weights {fmt(gaps['mixed_vs_old'])}, the new "
        f"{fmt(gaps['mixed_vs_new'])}, their labelled weights {fmt(gaps['mixed_vs_labels'])}"
        + (
            f" (the hybrid tokens: to their hybrid {fmt(gaps['hybrid_vs_labels'])}, to the update "
            f"applied whole at its first bucket {fmt(gaps['hybrid_vs_atomic'])})"
            if gaps.get("hybrid_vs_labels") is not None
            else ""
        )
        + "; "
        f"every token to its labelled weights {fmt(gaps['all_vs_labels'])} (tolerance {tol:g})"
    )
    outcome, diagnosis, why = decide(
        findings,
        pre,
        [
            (
                labels.outcome == "fail" and not gaps["clean_vs_labels"] <= tol,
                "reference_mismatch",
                "tokens sampled from one checkpoint alone do not match it: check the model, "
                "dtype and logprobs mode first",
            ),
            (mixed.outcome == "fail", "mixed_weights", mixed.note + f": {FIX}"),
            (
                labels.outcome == "fail",
                "wrong_version_labels",
                "the engine's logprobs do not follow the weight states its tokens are labelled "
                "with",
            ),
        ],
    )
    if outcome == "pass":
        return core.Verdict("pass", None, text, findings, pre)
    return core.Verdict(outcome, diagnosis, f"{why}: {text}", findings, pre)
