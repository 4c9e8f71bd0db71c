"""The inflight probe of category weight_update, judged: each sequence split at its weight-version
labels; tokens before the update must match the old weights, tokens after it the keep or the
recompute prediction, and the labels must put the update where the trainer's split fits best."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from parity.categories._update_judging import (
    attribute,
    attributed,
    batched,
    decide,
    effect,
    gap,
    mean,
    paired_rule_applies,
    separation,
    threshold,
)
from parity.trainer import hybrids
from parity.trainer.update_spec import SEMANTICS
from parity.trainer.updates import SplitScorer, stream_check
from parity.verdicts import core
from parity.verdicts.fmt import fmt


def judge_inflight(
    sc, er, scorer: SplitScorer, tol: float, detail: dict, pre: list
) -> core.Verdict:
    """inflight: split each sequence at its weight-version labels; tokens before must match the
    old weights, tokens after the keep or the recompute prediction; the labels must put the
    update where the trainer's split fits best."""
    spec = sc.options["update"]
    run = _split(er, batched(scorer), sc.sampling, tol)
    findings = [threshold("abs_dlogp_pre_vs_old", gap(run.pre_eng, run.pre_ref), tol)]
    # The paired share decides keep vs recompute closer than SEPARATION tolerances (as
    # judge_between's separations do).
    semantics = _judge_post(spec, run, tol, findings, pre, paired_rule_applies(scorer))
    _token_stream(er, run.seqs, run.ks, findings, detail)
    findings.append(_version_labels(run))
    _record(er, run, semantics, detail)
    att = _attribute_partial(scorer, spec.expect_semantics, run, tol, findings, detail)
    return _verdict(spec, run, semantics, att, tol, findings, pre)


@dataclass
class _Inflight:
    """The probe's sequences split at their labels (k tokens before the update each), beside
    the trainer's predictions: the old weights before the update; keep, recompute and the old
    weights after it; the sequences whose labels put the update at the wrong token."""

    seqs: list
    ks: list[int]
    pairs: list
    monotone: bool
    batch: object
    sampling: object
    pre_eng: list = field(default_factory=list)
    pre_ref: list = field(default_factory=list)
    post_eng: list = field(default_factory=list)
    post_keep: list = field(default_factory=list)
    post_rec: list = field(default_factory=list)
    post_old: list = field(default_factory=list)
    label_bad: int = 0

    def add(self, s, k: int, old, new, keep_at: dict[int, np.ndarray], tol: float) -> None:
        """Sequence `s` split at k: its pieces before and after, and whether its labels are
        off (`keep_at`: the keep prediction at k and the tokens either side of it)."""
        recompute = np.concatenate([old[:k], new[k:]])
        eng = np.asarray(s.logprobs, dtype=np.float64)
        self.pre_eng.append(eng[:k])
        self.pre_ref.append(old[:k])
        self.post_eng.append(eng[k:])
        self.post_keep.append(keep_at[k][k:])
        self.post_rec.append(recompute[k:])
        self.post_old.append(old[k:])
        if 0 < k < len(s.token_ids):
            self.label_bad += _label_off(eng, old, new, keep_at, k, tol)

    @cached_property
    def n_post(self) -> int:
        """Tokens sampled after the update."""
        return sum(len(x) for x in self.post_eng)

    @cached_property
    def g_keep(self) -> float:
        """Mean |dlogp| after the update to the keep prediction."""
        return mean(gap(self.post_eng, self.post_keep))

    @cached_property
    def g_rec(self) -> float:
        """Mean |dlogp| after the update to the recompute prediction."""
        return mean(gap(self.post_eng, self.post_rec))

    @cached_property
    def g_old(self) -> float:
        """Mean |dlogp| after the update to the old weights."""
        return mean(gap(self.post_eng, self.post_old))

    @cached_property
    def sep(self) -> float:
        """How far keep and recompute predictions are apart after the update."""
        return mean(gap(self.post_keep, self.post_rec))


def _split(er, batch, sampling, tol: float) -> _Inflight:
    """Each sequence split at its labels (the tokens labelled with the version before the
    update), with the trainer's old, new and keep predictions in three batched calls."""
    rec = er.extra.get("update") or {}
    old_version = rec.get("version_before")
    seqs = er.sequences
    ks = [sum(1 for v in (s.weight_versions or []) if v == old_version) for s in seqs]
    monotone = [list(s.weight_versions or []) == sorted(s.weight_versions or []) for s in seqs]
    pairs = [(s.prompt_token_ids, s.token_ids) for s in seqs]
    olds, news = batch.old_many(pairs, sampling), batch.new_many(pairs, sampling)
    keep_at = _keeps(batch, sampling, seqs, pairs, ks)
    run = _Inflight(seqs, ks, pairs, all(monotone), batch, sampling)
    for i, (s, k) in enumerate(zip(seqs, ks)):
        run.add(s, k, olds[i], news[i], keep_at[i], tol)
    return run


def _keeps(batch, sampling, seqs, pairs, ks: list[int]) -> list[dict[int, np.ndarray]]:
    """Per sequence, the keep prediction at its labelled split k, and at k - 1 and k + 1 for the
    labels' check where the split is inside the sequence: one batched call."""
    near = [
        (i, kk)
        for i, (s, k) in enumerate(zip(seqs, ks))
        if 0 < k < len(s.token_ids)
        for kk in (k - 1, k + 1)
    ]
    keeps = batch.keep_many(
        pairs + [pairs[i] for i, _ in near], ks + [kk for _, kk in near], sampling
    )
    keep_at: list[dict[int, np.ndarray]] = [{k: keeps[i]} for i, k in enumerate(ks)]
    for (i, kk), keep in zip(near, keeps[len(seqs) :]):
        keep_at[i][kk] = keep
    return keep_at


def _judge_post(spec, run: _Inflight, tol: float, findings: list, pre: list, exact: bool) -> str:
    """The tokens after the update, judged by the update's mode: wait and abort must sample none
    (a count-limit finding); keep needs some, with keep and recompute apart (preconditions), and
    they must match the expected semantics. Returns the semantics they follow ("n/a" for wait
    and abort, "indistinguishable" when keep and recompute are too close)."""
    expected = spec.expect_semantics
    if spec.mode in ("wait", "abort"):
        findings.append(
            core.count_limit(
                "post_update_tokens",
                run.n_post,
                0,
                note=f"mode {spec.mode} must not sample in-flight tokens under the new weights",
            )
        )
        return "n/a"
    pre.append(
        core.at_least(
            "post_update_tokens",
            run.n_post,
            1,
            "every request finished before the update: raise max_tokens",
        )
    )
    apart = separation(
        "keep_recompute_separation",
        run.post_keep,
        run.post_rec,
        tol,
        "keep and recompute predict nearly the same logprobs here: "
        "raise update.scale or update.after_tokens",
        run.post_eng if exact else None,
    )
    pre.append(apart)
    findings.append(
        threshold(
            f"abs_dlogp_post_vs_{expected}",
            gap(run.post_eng, run.post_keep if expected == "keep" else run.post_rec),
            tol,
        )
    )
    close = apart.met
    return ("keep" if run.g_keep < run.g_rec else "recompute") if close else "indistinguishable"


def _version_labels(run: _Inflight) -> core.Finding:
    """The sequences whose labels put the update at the wrong token (0 allowed)."""
    return core.count_limit(
        "version_labels",
        run.label_bad,
        0,
        len(run.seqs),
        note=f"{run.label_bad} sequence(s) whose version labels put the update at the wrong token "
        "(the trainer fits a split one token earlier or later clearly better)",
    )


def _record(er, run: _Inflight, semantics: str, detail: dict) -> None:
    """The probe's detail: the semantics, the gaps, the tokens before and after the update, the
    labels' order and where the worker saw the update, the effect."""
    rec = er.extra.get("update") or {}
    detail.update(
        semantics=semantics,
        abs_dlogp_pre_vs_old=mean(gap(run.pre_eng, run.pre_ref)),
        abs_dlogp_post_vs_keep=run.g_keep,
        abs_dlogp_post_vs_recompute=run.g_rec,
        abs_dlogp_post_vs_old=run.g_old,
        keep_recompute_separation=run.sep,
        n_pre_tokens=sum(run.ks),
        n_post_tokens=run.n_post,
        labels_monotone=run.monotone,
        tokens_before_update=run.ks,
        seen_at_request=rec.get("seen_at_request"),
        effect=effect(run.g_old, min(run.g_keep, run.g_rec)) if run.n_post else None,
    )


def _attribute_partial(
    scorer: SplitScorer, expected: str, run: _Inflight, tol: float, findings: list, detail: dict
) -> hybrids.Attribution | None:
    """The hybrid search, when the tokens after the update fail while those before pass and
    neither the old weights, keep nor recompute explain them (a partial update?); None
    otherwise."""
    by_name = {f.name: f for f in findings}
    post = by_name.get(f"abs_dlogp_post_vs_{expected}")
    pre_bad = by_name["abs_dlogp_pre_vs_old"].outcome == "fail"
    partial = (
        post is not None
        and post.outcome == "fail"
        and not pre_bad
        and min(run.g_old, run.g_keep, run.g_rec) > tol
    )
    if not partial:
        return None
    batch, sampling, pairs, ks = run.batch, run.sampling, run.pairs, run.ks

    def predict(pair, idx):
        sub = [pairs[i] for i in idx]
        out = (
            batch.keep_many(sub, [ks[i] for i in idx], sampling, new=pair)
            if expected == "keep"
            else batch.new_many(sub, sampling, new=pair)
        )
        return [x[ks[i] :] for x, i in zip(out, idx)]

    return attribute(scorer, hybrids.Predictor(predict), run.post_eng, tol, detail, findings)


def _verdict(
    spec, run: _Inflight, semantics: str, att, tol: float, findings: list, pre: list
) -> core.Verdict:
    """The verdict: the first diagnosis that holds once the findings failed, and the gaps."""
    gaps = (
        f"{sum(run.ks)} tokens before the update, {run.n_post} after; after it, mean |dlogp| to "
        f"keep {fmt(run.g_keep)}, to recompute {fmt(run.g_rec)}, to the old weights "
        f"{fmt(run.g_old)} (keep vs recompute differ by {fmt(run.sep)}; tolerance {tol:g})"
    )
    outcome, diagnosis, why = decide(
        findings, pre, _diagnoses(spec.expect_semantics, run, semantics, att, tol, findings)
    )
    if outcome == "pass":
        head = (
            f"in-flight requests continue with {semantics.upper()} semantics"
            if semantics not in ("n/a", "indistinguishable")
            else f"semantics {semantics} (mode {spec.mode})"
        )
        return core.Verdict("pass", None, f"{head}: {gaps}", findings, pre)
    return core.Verdict(outcome, diagnosis, f"{why}: {gaps}", findings, pre)


def _diagnoses(
    expected: str, run: _Inflight, semantics: str, att, tol: float, findings: list
) -> list[tuple[bool, str | None, str]]:
    """The (condition, diagnosis, why) entries of `decide`, in order: reference mismatch, a
    partial update, no effect, the other semantics, the token stream, the labels, the mode."""
    by_name = {f.name: f for f in findings}
    post = by_name.get(f"abs_dlogp_post_vs_{expected}")
    post_bad = post is not None and post.outcome == "fail" and semantics in SEMANTICS
    stream, mode = by_name.get("token_stream"), by_name.get("post_update_tokens")
    recomputed = " (their KV was recomputed: a cache reset with running requests preempts them)"
    return [
        (
            by_name["abs_dlogp_pre_vs_old"].outcome == "fail",
            "reference_mismatch",
            "tokens sampled before the update do not match the old weights: check the model, "
            "dtype and logprobs mode first",
        ),
        attributed(att, tol),
        (
            post_bad and run.g_old < min(run.g_keep, run.g_rec),
            "no_effect",
            "the update did not take effect for the in-flight requests: they still sample from "
            "the old weights",
        ),
        (
            post_bad,
            "semantics_mismatch",
            f"in-flight requests continue with {semantics.upper()} semantics, the scenario "
            f"expects {expected}" + (recomputed if semantics == "recompute" else ""),
        ),
        (
            stream is not None and stream.outcome == "fail",
            "token_stream",
            stream.note if stream else "",
        ),
        (
            by_name["version_labels"].outcome == "fail",
            "wrong_version_labels",
            by_name["version_labels"].note,
        ),
        (mode is not None and mode.outcome == "fail", "wrong_mode", mode.note if mode else ""),
    ]


def _token_stream(er, seqs, ks: list[int], findings: list, detail: dict) -> None:
    """Tokens lost or duplicated at the pause: each paused request's tokens before the update
    against the same seeded request run without a pause (a count-limit finding, 0 allowed; a
    divergence that is no shift, e.g. numerics picking another token, is shown, not counted)."""
    ref = {
        (s.prompt_index, s.sample_index): s.token_ids for s in er.extra.get("uninterrupted") or []
    }
    if not ref:
        return
    kinds = [
        stream_check(s.token_ids, ref.get((s.prompt_index, s.sample_index), []), k)
        for s, k in zip(seqs, ks)
    ]
    counts = {
        kind: kinds.count(kind) for kind in ("equal", "lost", "duplicated", "diverged", "short")
    }
    detail["token_stream"] = counts
    bad = counts["lost"] + counts["duplicated"]
    findings.append(
        core.count_limit(
            "token_stream",
            bad,
            0,
            len(seqs),
            note=f"{counts['lost']} request(s) lost a token and {counts['duplicated']} repeated one "
            f"at the pause ({counts['equal']} equal to the uninterrupted run, "
            f"{counts['diverged']} diverged otherwise)",
        )
    )


def _label_off(eng, old, new, keep: dict[int, np.ndarray], k: int, tol: float) -> int:
    """1 when the version labels put the update at the wrong token: a split one token earlier
    or later fits the engine's logprobs clearly better (by more than 2 * `tol` summed over the
    sequence) than the labelled split, under whichever semantics fits it best. `keep`: the
    keep prediction at k and at whichever of k - 1, k + 1 the sequence has."""

    def fit(kk: int) -> float:
        recompute = np.concatenate([old[:kk], new[kk:]])
        return min(float(np.abs(eng - keep[kk]).sum()), float(np.abs(eng - recompute).sum()))

    labelled = fit(k)
    others = [fit(kk) for kk in (k - 1, k + 1) if kk in keep]
    return int(bool(others) and min(others) < labelled - 2 * max(tol, 1e-3))
