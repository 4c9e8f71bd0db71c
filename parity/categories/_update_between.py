"""The takes_effect and stale_cache probes of category weight_update, judged: one generate before
the update and the same after it, against a trainer holding the old and the new checkpoint (and,
for stale_cache, the prediction of a prefix cache filled before the update)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from parity.categories._update_drive import block_size
from parity.categories._update_judging import (
    OLD,
    STALE_CACHE,
    attribute,
    attributed,
    batched,
    decide,
    effect,
    gap,
    hides,
    mean,
    paired_rule_applies,
    screen,
    screened,
    separation,
    threshold,
)
from parity.trainer import hybrids
from parity.trainer.updates import SplitScorer, cached_boundary
from parity.verdicts import core
from parity.verdicts.fmt import fmt


def judge_between(sc, er, scorer: SplitScorer, tol: float, detail: dict, pre: list) -> core.Verdict:
    """takes_effect and stale_cache: a generate call before the update, the same after it."""
    run = _predict(er, batched(scorer), sc.sampling)
    exact = paired_rule_applies(scorer)
    paired_engine = run.eng_a if exact else None
    findings = [
        threshold("abs_dlogp_before_vs_old", run.gap_before, tol),
        threshold("abs_dlogp_after_vs_new", run.gap_new, tol),
    ]
    pre.append(
        separation(
            "old_new_separation",
            run.old_a,
            run.new_a,
            tol,
            "the new weights are too close to the old ones to tell them apart: raise update.scale "
            "(or update.lr / train_steps)"
            + (
                ""
                if exact
                else "; a step-sized update is below bf16 noise (the paired rule needs an fp32 "
                "trainer): run the engine in float32"
            ),
            paired_engine,
        )
    )
    _record(er, run, detail)
    g_stale = (
        _stale_cache(er, run, tol, pre, detail, paired_engine)
        if sc.options["probe"] == "stale_cache"
        else None
    )
    att = _attribute_partial(scorer, run, g_stale, tol, findings, detail)
    top = _screen(scorer, run, tol, findings, detail) if att is None and exact else None
    return _verdict(run, g_stale, att, tol, findings, pre, screened(top, detail))


@dataclass
class _Between:
    """The sequences of the generate calls before and after the update, beside the trainer's
    predictions (old weights before it; old and new weights after it), their gaps and means."""

    after: list
    pairs_a: list
    batch: object
    sampling: object
    eng_a: list
    old_a: list
    new_a: list
    gap_before: list
    gap_old: list
    gap_new: list
    stale: list | None = None  # the stale-cache prediction (probe stale_cache)

    @cached_property
    def g_old(self) -> float:
        """Mean |dlogp| after the update to the old weights."""
        return mean(self.gap_old)

    @cached_property
    def g_new(self) -> float:
        """Mean |dlogp| after the update to the new weights."""
        return mean(self.gap_new)

    @cached_property
    def share(self) -> float:
        """The effect: 0 = the engine follows the old weights, 1 = the new ones."""
        return effect(self.g_old, self.g_new)


def _predict(er, batch, sampling) -> _Between:
    """The trainer's predictions for the sequences before and after the update (the old weights
    in one call for both: the prompts are the same, computed once; the new weights after it),
    and the engine's gaps to them."""
    before, after = er.extra["before"], er.sequences
    pairs_a = [(s.prompt_token_ids, s.token_ids) for s in after]
    olds = batch.old_many([(s.prompt_token_ids, s.token_ids) for s in before] + pairs_a, sampling)
    old_b, old_a = olds[: len(before)], olds[len(before) :]
    new_a = batch.new_many(pairs_a, sampling)
    eng_b = [s.logprobs for s in before]
    eng_a = [s.logprobs for s in after]
    return _Between(
        after,
        pairs_a,
        batch,
        sampling,
        eng_a,
        old_a,
        new_a,
        gap_before=gap(eng_b, old_b),
        gap_old=gap(eng_a, old_a),
        gap_new=gap(eng_a, new_a),
    )


def _record(er, run: _Between, detail: dict) -> None:
    """The probe's detail: the gaps, the effect, and the version labels the engine put on its
    tokens after the update (shown, not judged: it cannot contradict itself)."""
    version = (er.extra.get("update") or {}).get("version")
    detail.update(
        abs_dlogp_before_vs_old=mean(run.gap_before),
        abs_dlogp_after_vs_old=run.g_old,
        abs_dlogp_after_vs_new=run.g_new,
        effect=run.share,
        version_labels_after=sorted({v for s in run.after for v in (s.weight_versions or [])}),
        version_after_update=version,
    )


def _stale_cache(er, run: _Between, tol: float, pre: list, detail: dict, paired_engine) -> float:
    """The stale hypothesis: every whole block of the prompt served from a cache filled before
    the update (what the engine reports it actually served is kept as evidence); a separation
    precondition against the fresh prediction. Returns the engine's mean gap to it."""
    bs = block_size(er)
    cached = [cached_boundary(len(s.prompt_token_ids), bs) for s in run.after]
    stale = run.batch.score_many(
        [(p, t, c) for (p, t), c in zip(run.pairs_a, cached)], run.sampling
    )
    run.stale = stale
    g_stale = mean(gap(run.eng_a, stale))
    pre.append(
        separation(
            "stale_fresh_separation",
            stale,
            run.new_a,
            tol,
            "KV from the old weights would barely change these logprobs (prompts shorter than "
            "a cache block, or a small update): the probe cannot see a stale cache",
            paired_engine,
        )
    )
    detail.update(
        abs_dlogp_after_vs_stale=g_stale,
        cached_tokens_hypothesis=cached,
        cached_tokens_engine=[s.num_cached_tokens for s in run.after],
        context_tokens=er.extra.get("context_tokens"),
        block_size=bs,
        prefix_caching=((er.effective_config or {}).get("key") or {}).get("enable_prefix_caching"),
    )
    return g_stale


def _attribute_partial(
    scorer: SplitScorer, run: _Between, g_stale, tol: float, findings: list, detail: dict
) -> hybrids.Attribution | None:
    """The hybrid search, when the engine matched the old weights before the update but after it
    matches neither the new nor the old ones, nor a stale cache (a partial update?); None
    otherwise."""
    before_bad, after_bad = (f.outcome == "fail" for f in findings)
    partial = (
        after_bad
        and not before_bad
        and run.g_old > tol
        and not (g_stale is not None and g_stale < run.g_new)
    )
    if not partial:
        return None
    batch, sampling, pairs_a = run.batch, run.sampling, run.pairs_a
    predict = hybrids.Predictor(
        lambda pair, idx: batch.new_many([pairs_a[i] for i in idx], sampling, new=pair)
    )
    return attribute(scorer, predict, run.eng_a, tol, detail, findings)


def _screen(scorer, run: _Between, tol: float, findings: list, detail: dict) -> str | None:
    """The paired screen (_update_judging.screen) when the mean |dlogp| matched the old weights
    before the update and the new ones after it: a stale component, the old weights or a stale
    cache moving logprobs less than the noise on average; None when it does not run."""
    if any(f.outcome == "fail" for f in findings[:2]):
        return None
    batch, sampling, pairs_a = run.batch, run.sampling, run.pairs_a
    extra = {OLD: run.old_a} | ({STALE_CACHE: run.stale} if run.stale is not None else {})
    # A scorer without model pairs (a synthetic trainer) has no components to screen.
    pairs = getattr(scorer, "pairs", None)
    small = pairs is not None and hides(run.g_old, len(hybrids.HybridModel.names(pairs()[1])), tol)
    return screen(
        scorer,
        (lambda pair, idx: batch.new_many([pairs_a[i] for i in idx], sampling, new=pair))
        if small
        else None,
        run.eng_a,
        run.new_a,
        extra,
        detail,
        findings,
    )


def _verdict(
    run: _Between, g_stale, att, tol: float, findings: list, pre: list, paired_entry: tuple
) -> core.Verdict:
    """The verdict: the first diagnosis that holds once the findings failed (reference mismatch,
    a stale prefix cache, a partial update, no effect), and the gaps."""
    stale_text = f", to the stale-cache prediction {g_stale:.3g}" if g_stale is not None else ""
    gaps = (
        f"mean |dlogp| after the update to the new weights {fmt(run.g_new)}, to the old "
        f"{fmt(run.g_old)}{stale_text} (tolerance {tol:g}); effect {fmt(run.share, 2)} (0 = old, "
        "1 = new)"
    )
    before_bad, after_bad = (f.outcome == "fail" for f in findings[:2])
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
                after_bad and g_stale is not None and g_stale < run.g_new,
                "stale_prefix_cache",
                "prefix cache reused KV from before the update: disable prefix caching or reset it "
                "(pause_generation(clear_cache=True) or reset_prefix_cache() after the load)",
            ),
            paired_entry,
            attributed(att, tol),
            (after_bad, "no_effect", _no_effect(run, att, tol)),
        ],
    )
    if outcome == "pass":
        return core.Verdict("pass", None, f"the update took effect: {gaps}", findings, pre)
    return core.Verdict(outcome, diagnosis, f"{why}: {gaps}", findings, pre)


def _no_effect(run: _Between, att, tol: float) -> str:
    """Why the update did not take effect: the old weights still, or a part of the update only
    (with what the hybrid search found), and the load path to use."""
    return (
        "the update did not take effect: "
        + (
            "the engine still samples from the old weights"
            if run.g_old <= tol
            else f"the engine samples from neither the new nor the old weights (effect "
            f"{fmt(run.share, 2)}): only part of the update reached the weights it computes with"
            + (f"; {hybrids.message(att, tol)}" if att else "")
        )
        + "; load through the engine's reload path (collective_rpc('reload_weights')) "
        "instead of writing into parameters"
    )
