"""The takes_effect and stale_cache probes of category weight_update, judged: one generate before
the update and the same after it, against a trainer holding the old and the new checkpoint (and,
for stale_cache, the prediction of a prefix cache filled before the update)."""

from __future__ import annotations

from parity.categories._update_drive import block_size
from parity.categories._update_judging import (
    attribute,
    attributed,
    batched,
    decide,
    effect,
    gap,
    mean,
    separation,
    threshold,
)
from parity.trainer import hybrids
from parity.trainer.updates import SplitScorer, cached_boundary
from parity.verdicts import core
from parity.verdicts.fmt import fmt


def judge_between(sc, er, scorer: SplitScorer, tol: float, detail: dict, pre: list) -> core.Verdict:
    """takes_effect and stale_cache: a generate call before the update, the same after it."""
    sampling = sc.sampling
    before, after = er.extra["before"], er.sequences
    batch = batched(scorer)
    pairs_a = [(s.prompt_token_ids, s.token_ids) for s in after]
    # One call: the prompts before and after the update are the same, computed once.
    olds = batch.old_many([(s.prompt_token_ids, s.token_ids) for s in before] + pairs_a, sampling)
    old_b, old_a = olds[: len(before)], olds[len(before) :]
    new_a = batch.new_many(pairs_a, sampling)
    eng_b = [s.logprobs for s in before]
    eng_a = [s.logprobs for s in after]
    gap_before = gap(eng_b, old_b)
    gap_old, gap_new = gap(eng_a, old_a), gap(eng_a, new_a)
    findings = [
        threshold("abs_dlogp_before_vs_old", gap_before, tol),
        threshold("abs_dlogp_after_vs_new", gap_new, tol),
    ]
    pre.append(
        separation(
            "old_new_separation",
            old_a,
            new_a,
            tol,
            "the new weights are too close to the old ones to tell them apart: raise update.scale",
        )
    )
    g_old, g_new = mean(gap_old), mean(gap_new)
    share = effect(g_old, g_new)
    # The engine labels its own tokens; shown, not judged (it cannot contradict itself).
    version = (er.extra.get("update") or {}).get("version")
    detail.update(
        abs_dlogp_before_vs_old=mean(gap_before),
        abs_dlogp_after_vs_old=g_old,
        abs_dlogp_after_vs_new=g_new,
        effect=share,
        version_labels_after=sorted({v for s in after for v in (s.weight_versions or [])}),
        version_after_update=version,
    )
    stale_text, g_stale = "", None
    if sc.options["probe"] == "stale_cache":
        # The stale hypothesis: every whole block of the prompt served from a cache filled
        # before the update (what the engine reports it actually served is kept as evidence).
        bs = block_size(er)
        cached = [cached_boundary(len(s.prompt_token_ids), bs) for s in after]
        stale = batch.score_many([(p, t, c) for (p, t), c in zip(pairs_a, cached)], sampling)
        g_stale = mean(gap(eng_a, stale))
        pre.append(
            separation(
                "stale_fresh_separation",
                stale,
                new_a,
                tol,
                "KV from the old weights would barely change these logprobs (prompts shorter than "
                "a cache block, or a small update): the probe cannot see a stale cache",
            )
        )
        detail.update(
            abs_dlogp_after_vs_stale=g_stale,
            cached_tokens_hypothesis=cached,
            cached_tokens_engine=[s.num_cached_tokens for s in after],
            context_tokens=er.extra.get("context_tokens"),
            block_size=bs,
            prefix_caching=((er.effective_config or {}).get("key") or {}).get(
                "enable_prefix_caching"
            ),
        )
        stale_text = f", to the stale-cache prediction {g_stale:.3g}"
    gaps = (
        f"mean |dlogp| after the update to the new weights {fmt(g_new)}, to the old "
        f"{fmt(g_old)}{stale_text} (tolerance {tol:g}); effect {fmt(share, 2)} (0 = old, "
        "1 = new)"
    )
    before_bad, after_bad = (f.outcome == "fail" for f in findings)
    partial = (
        after_bad
        and not before_bad
        and g_old > tol
        and not (g_stale is not None and g_stale < g_new)
    )
    att = (
        attribute(
            scorer,
            hybrids.Predictor(
                lambda pair, idx: batch.new_many([pairs_a[i] for i in idx], sampling, new=pair)
            ),
            eng_a,
            tol,
            detail,
            findings,
        )
        if partial
        else None
    )
    outcome, diagnosis, why = decide(
        findings,
        pre,
        [
            (
                before_bad,
                "reference_mismatch",
                "the engine did not match the trainer on the old weights before the update, so the "
                "update cannot be judged: check the model, dtype and logprobs mode first",
            ),
            (
                after_bad and g_stale is not None and g_stale < g_new,
                "stale_prefix_cache",
                "prefix cache reused KV from before the update: disable prefix caching or reset it "
                "(pause_generation(clear_cache=True) or reset_prefix_cache() after the load)",
            ),
            attributed(att, tol),
            (
                after_bad,
                "no_effect",
                "the update did not take effect: "
                + (
                    "the engine still samples from the old weights"
                    if g_old <= tol
                    else f"the engine samples from neither the new nor the old weights (effect "
                    f"{fmt(share, 2)}): only part of the update reached the weights it computes with"
                    + (f"; {hybrids.message(att, tol)}" if att else "")
                )
                + "; load through the engine's reload path (collective_rpc('reload_weights')) "
                "instead of writing into parameters",
            ),
        ],
    )
    if outcome == "pass":
        return core.Verdict("pass", None, f"the update took effect: {gaps}", findings, pre)
    return core.Verdict(outcome, diagnosis, f"{why}: {gaps}", findings, pre)
