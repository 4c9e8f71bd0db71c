"""The inflight probe of category weight_update, judged: each sequence split at its weight-version
labels; tokens before the update must match the old weights, tokens after it the keep or the
recompute prediction, and the labels must put the update where the trainer's split fits best."""

from __future__ import annotations

import numpy as np

from parity.trainer import hybrids
from parity.trainer.updates import SEMANTICS, SEPARATION, SplitScorer, keep_boundary, stream_check
from parity.verdicts import core, stats
from parity.verdicts.fmt import fmt


def seq_means(per_seq: list[np.ndarray]) -> np.ndarray:
    return np.array([float(np.mean(x)) for x in per_seq if len(x)])


def gap(eng: list[np.ndarray], ref: list[np.ndarray]) -> list[np.ndarray]:
    return [np.abs(np.asarray(e, dtype=np.float64) - r) for e, r in zip(eng, ref)]


def mean(per_seq: list[np.ndarray]) -> float:
    flat = (
        np.concatenate([x for x in per_seq if len(x)])
        if any(len(x) for x in per_seq)
        else np.zeros(0)
    )
    return float(flat.mean()) if len(flat) else float("nan")


def threshold(name: str, per_seq: list[np.ndarray], tol: float) -> core.Finding:
    finding = core.from_test(name, stats.threshold(seq_means(per_seq), tol))
    finding.value = mean(per_seq)  # the token mean, as the report's gaps are
    return finding


def separation(
    name: str, a: list[np.ndarray], b: list[np.ndarray], tol: float, why: str
) -> core.Precondition:
    """Two hypotheses are told apart only when their predictions differ by SEPARATION
    tolerances: a precondition, not a finding (closer, the data cannot decide)."""
    return core.at_least(name, mean(gap(a, b)), SEPARATION * tol, why)


def effect(gap_old: float, gap_new: float) -> float:
    """0 = the engine still follows the old weights, 1 = the new ones."""
    total = gap_old + gap_new
    return float(gap_old / total) if total > 0 else float("nan")


def decide(findings, pre, ordered) -> tuple[str, str | None, str]:
    """(outcome, diagnosis, why): the first (condition, diagnosis, why) that holds, once the
    findings failed."""
    outcome = core.combine(findings, pre)
    if outcome == "pass":
        return outcome, None, ""
    for cond, diagnosis, why in ordered:
        if cond:
            return outcome, diagnosis, why
    unmet = "; ".join(p.note for p in pre if not p.met)
    return outcome, None, unmet or "not enough evidence to decide"


def attribute(
    scorer: SplitScorer, predict, engine: list, tol: float, detail: dict, findings: list
) -> hybrids.Attribution:
    """Which components stayed stale after an update that matches neither checkpoint (hybrid
    hypotheses, parity.trainer.hybrids; `predict(pair, i)`: the probe's expected logprobs of sequence i
    with `pair` as the new weights); a count-limit finding on them when a hypothesis fits."""
    att = hybrids.explain(scorer, predict, engine, tol)
    detail["attribution"] = hybrids.summary(att)
    if att.fitted:
        findings.append(
            core.count_limit(
                "stale_components",
                len(att.stale),
                0,
                note=f"components computing with the old weights after the update: "
                f"{', '.join(att.stale) or 'none'}",
            )
        )
    return att


def attributed(att: hybrids.Attribution | None, tol: float) -> tuple[bool, str | None, str]:
    """The (condition, diagnosis, why) entry of `decide` for a partial update the hybrid search
    explained (condition False when there was no search or nothing fitted)."""
    diagnosis = att.diagnosis() if att is not None else None
    why = "only part of the update took effect: " + (hybrids.message(att, tol) if att else "")
    return diagnosis is not None, diagnosis, why


def judge_inflight(
    sc, er, scorer: SplitScorer, tol: float, detail: dict, pre: list
) -> core.Verdict:
    """inflight: split each sequence at its weight-version labels; tokens before must match the
    old weights, tokens after the keep or the recompute prediction; the labels must put the
    update where the trainer's split fits best."""
    sampling, spec = sc.sampling, sc.options["update"]
    rec = er.extra.get("update") or {}
    old_version = rec.get("version_before")
    seqs = er.sequences
    ks = [sum(1 for v in (s.weight_versions or []) if v == old_version) for s in seqs]
    monotone = [list(s.weight_versions or []) == sorted(s.weight_versions or []) for s in seqs]
    batch = batched(scorer)
    pairs = [(s.prompt_token_ids, s.token_ids) for s in seqs]
    olds, news = batch.old_many(pairs, sampling), batch.new_many(pairs, sampling)
    # Keep at the labelled split, and one token either side of it for the labels' check.
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
    pre_eng, pre_ref, post_eng, post_keep, post_rec, post_old = [], [], [], [], [], []
    label_bad = 0
    for i, (s, k) in enumerate(zip(seqs, ks)):
        old, new, keep = olds[i], news[i], keep_at[i][k]
        recompute = np.concatenate([old[:k], new[k:]])
        eng = np.asarray(s.logprobs, dtype=np.float64)
        pre_eng.append(eng[:k])
        pre_ref.append(old[:k])
        post_eng.append(eng[k:])
        post_keep.append(keep[k:])
        post_rec.append(recompute[k:])
        post_old.append(old[k:])
        if 0 < k < len(s.token_ids):
            label_bad += _label_off(eng, old, new, keep_at[i], k, tol)
    n_post = sum(len(x) for x in post_eng)
    g_keep = mean(gap(post_eng, post_keep))
    g_rec = mean(gap(post_eng, post_rec))
    g_old = mean(gap(post_eng, post_old))
    sep = mean(gap(post_keep, post_rec))
    findings = [threshold("abs_dlogp_pre_vs_old", gap(pre_eng, pre_ref), tol)]
    expected = spec.expect_semantics
    if spec.mode in ("wait", "abort"):
        semantics = "n/a"
        findings.append(
            core.count_limit(
                "post_update_tokens",
                n_post,
                0,
                note=f"mode {spec.mode} must not sample in-flight tokens under the new weights",
            )
        )
    else:
        pre.append(
            core.at_least(
                "post_update_tokens",
                n_post,
                1,
                "every request finished before the update: raise max_tokens",
            )
        )
        pre.append(
            separation(
                "keep_recompute_separation",
                post_keep,
                post_rec,
                tol,
                "keep and recompute predict nearly the same logprobs here: "
                "raise update.scale or update.after_tokens",
            )
        )
        findings.append(
            threshold(
                f"abs_dlogp_post_vs_{expected}",
                gap(post_eng, post_keep if expected == "keep" else post_rec),
                tol,
            )
        )
        close = sep >= SEPARATION * tol
        semantics = ("keep" if g_keep < g_rec else "recompute") if close else "indistinguishable"
    _token_stream(er, seqs, ks, findings, detail)
    findings.append(
        core.count_limit(
            "version_labels",
            label_bad,
            0,
            len(seqs),
            note=f"{label_bad} sequence(s) whose version labels put the update at the wrong token "
            "(the trainer fits a split one token earlier or later clearly better)",
        )
    )
    detail.update(
        semantics=semantics,
        abs_dlogp_pre_vs_old=mean(gap(pre_eng, pre_ref)),
        abs_dlogp_post_vs_keep=g_keep,
        abs_dlogp_post_vs_recompute=g_rec,
        abs_dlogp_post_vs_old=g_old,
        keep_recompute_separation=sep,
        n_pre_tokens=sum(ks),
        n_post_tokens=n_post,
        labels_monotone=all(monotone),
        tokens_before_update=ks,
        seen_at_request=rec.get("seen_at_request"),
        effect=effect(g_old, min(g_keep, g_rec)) if n_post else None,
    )
    gaps = (
        f"{sum(ks)} tokens before the update, {n_post} after; after it, mean |dlogp| to "
        f"keep {fmt(g_keep)}, to recompute {fmt(g_rec)}, to the old weights {fmt(g_old)} "
        f"(keep vs recompute differ by {fmt(sep)}; tolerance {tol:g})"
    )
    head = (
        f"in-flight requests continue with {semantics.upper()} semantics"
        if semantics not in ("n/a", "indistinguishable")
        else f"semantics {semantics} (mode {spec.mode})"
    )
    by_name = {f.name: f for f in findings}
    post = by_name.get(f"abs_dlogp_post_vs_{expected}")
    post_bad = post is not None and post.outcome == "fail" and semantics in SEMANTICS
    pre_bad = by_name["abs_dlogp_pre_vs_old"].outcome == "fail"
    att = None
    if (
        post is not None
        and post.outcome == "fail"
        and not pre_bad
        and min(g_old, g_keep, g_rec) > tol
    ):  # neither weights explain it: partial update?

        def predict(pair, idx):
            sub = [pairs[i] for i in idx]
            out = (
                batch.keep_many(sub, [ks[i] for i in idx], sampling, new=pair)
                if expected == "keep"
                else batch.new_many(sub, sampling, new=pair)
            )
            return [x[ks[i] :] for x, i in zip(out, idx)]

        att = attribute(scorer, hybrids.Predictor(predict), post_eng, tol, detail, findings)
    outcome, diagnosis, why = decide(
        findings,
        pre,
        [
            (
                pre_bad,
                "reference_mismatch",
                "tokens sampled before the update do not match the old weights: check the model, "
                "dtype and logprobs mode first",
            ),
            attributed(att, tol),
            (
                post_bad and g_old < min(g_keep, g_rec),
                "no_effect",
                "the update did not take effect for the in-flight requests: they still sample from "
                "the old weights",
            ),
            (
                post_bad,
                "semantics_mismatch",
                f"in-flight requests continue with {semantics.upper()} semantics, the scenario "
                f"expects {expected}"
                + (
                    " (their KV was recomputed: a cache reset with running requests preempts them)"
                    if semantics == "recompute"
                    else ""
                ),
            ),
            (
                by_name.get("token_stream") is not None
                and by_name["token_stream"].outcome == "fail",
                "token_stream",
                by_name["token_stream"].note if "token_stream" in by_name else "",
            ),
            (
                by_name["version_labels"].outcome == "fail",
                "wrong_version_labels",
                by_name["version_labels"].note,
            ),
            (
                by_name.get("post_update_tokens") is not None
                and by_name["post_update_tokens"].outcome == "fail",
                "wrong_mode",
                by_name.get("post_update_tokens").note if by_name.get("post_update_tokens") else "",
            ),
        ],
    )
    if outcome == "pass":
        return core.Verdict("pass", None, f"{head}: {gaps}", findings, pre)
    return core.Verdict(outcome, diagnosis, f"{why}: {gaps}", findings, pre)


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


class _OneByOne:
    """The batched calls over a scorer that has only the one-sequence ones (old, new, keep,
    score), scoring one sequence at a time: e.g. a synthetic trainer in a test."""

    def __init__(self, scorer):
        self.scorer = scorer

    def old_many(self, pairs, sampling) -> list[np.ndarray]:
        return [self.scorer.old(p, t, sampling) for p, t in pairs]

    def new_many(self, pairs, sampling, new=None) -> list[np.ndarray]:
        if new is None:
            return [self.scorer.new(p, t, sampling) for p, t in pairs]
        return self.score_many([(p, t, 0) for p, t in pairs], sampling, new)

    def keep_many(self, pairs, ks, sampling, new=None) -> list[np.ndarray]:
        if new is None:
            return [self.scorer.keep(p, t, k, sampling) for (p, t), k in zip(pairs, ks)]
        return self.score_many(
            [(p, t, keep_boundary(len(p), k)) for (p, t), k in zip(pairs, ks)], sampling, new
        )

    def score_many(self, items, sampling, new=None) -> list[np.ndarray]:
        extra = {} if new is None else {"new": new}
        return [self.scorer.score(p, t, b, sampling, **extra) for p, t, b in items]


def batched(scorer):
    """The scorer's batched calls (old_many, new_many, keep_many, score_many: SplitScorer's),
    or the same one sequence at a time for a scorer with only the one-sequence calls."""
    return scorer if hasattr(scorer, "score_many") else _OneByOne(scorer)
