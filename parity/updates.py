"""Category `weight_update`: pushes new weights into a live engine (between calls, over a warm
prefix cache, mid-generation) and judges its samples against a trainer holding both checkpoints,
including which in-flight semantics (keep the old KV, or recompute) the engine implements."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from parity import stats
from parity.checks import Finding, Verdict, combine
from parity.engines.base import SamplingSpec, Sequence

PROBES = ("takes_effect", "stale_cache", "inflight")
VIAS = ("reload", "inplace")
MODES = ("keep", "wait", "abort")
SEMANTICS = ("keep", "recompute")
# Two hypotheses (old vs new weights, keep vs recompute, stale vs fresh KV) are told apart only
# when the references they predict differ by this many tolerances; closer, the verdict says so.
SEPARATION = 3.0
DEFAULT_TOLERANCE = 0.05  # mean |dlogp| to the matching reference (bf16 noise ~0.04, FACTS.md)


@dataclass(frozen=True)
class UpdateSpec:
    """The `update` table of a weight_update scenario.

    Attributes:
        target: the new weights: a model name or checkpoint directory; None = a perturbed copy
            of the scenario's model (`parity models perturb MODEL --seed --scale`).
        seed, scale: the perturbation, when target is None.
        via: "reload" (the engine's real update path) or "inplace" (param.data.copy_ into the
            live parameters: the negative control).
        mode: in-flight requests during the update: "keep" | "wait" | "abort".
        clear_cache: drop the prefix cache (KV computed with the old weights) with the update.
        after_tokens: inflight probe: update once every request has sampled this many tokens.
        expect_semantics: inflight probe: "keep" (continue on the old KV) or "recompute".
        ignore_eos: inflight probe: sample through EOS so every request spans the update.
        context_tokens: stale_cache probe: tokens of shared context put before every prompt so
            it fills whole cache blocks; None = one block of the engine's KV cache.
    """

    target: str | None = None
    seed: int = 1
    scale: float = 1.0
    via: str = "reload"
    mode: str = "keep"
    clear_cache: bool = False
    after_tokens: int = 8
    expect_semantics: str = "keep"
    ignore_eos: bool = True
    context_tokens: int | None = None


_FIELD_TYPES = {"target": str, "seed": int, "scale": float, "via": str, "mode": str,
                "clear_cache": bool, "after_tokens": int, "expect_semantics": str,
                "ignore_eos": bool, "context_tokens": int}
_CHOICES = {"via": VIAS, "mode": MODES, "expect_semantics": SEMANTICS}


def parse_update(table: Any, path: str) -> tuple[UpdateSpec | None, list[tuple[str, str, str]]]:
    """Validate a scenario's `update` table; returns (spec or None, every problem found)."""
    if table is None:
        return UpdateSpec(), []
    if not isinstance(table, dict):
        return None, [(path, "update", "must be a table, e.g. update = { scale = 1.0 }")]
    problems, kwargs = [], {}
    for key, value in table.items():
        typ = _FIELD_TYPES.get(key)
        fld = f"update.{key}"
        if typ is None:
            problems.append((path, fld, f"unknown field; allowed: {', '.join(_FIELD_TYPES)}"))
        elif not (isinstance(value, typ) or (typ is float and isinstance(value, int)))\
                or (typ is not bool and isinstance(value, bool)):
            problems.append((path, fld, f"expected {typ.__name__}, got {value!r}"))
        elif key in _CHOICES and value not in _CHOICES[key]:
            problems.append((path, fld, f"{value!r}: use one of {', '.join(_CHOICES[key])}"))
        elif key in ("after_tokens", "context_tokens") and value < 0:
            problems.append((path, fld, "must be >= 0"))
        elif key == "scale" and not (np.isfinite(value) and value > 0):
            problems.append((path, fld, "must be a finite number > 0 (0 would be no update)"))
        else:
            kwargs[key] = typ(value)
    return (None, problems) if problems else (UpdateSpec(**kwargs), [])


# ----------------------------------------------------------------------------- the trainer side


class SplitScorer:
    """The trainer holding two checkpoints: scores a sequence whose positions before `boundary`
    were computed (KV and logits) by the old weights and the rest by the new weights attending to
    that old KV, as an engine that swaps weights between two steps does.

    In an engine step loop a request's prefill computes the KV of every prompt position and
    samples completion token 1; each later step computes the KV of the last sampled token and
    samples the next. So after k >= 1 tokens sampled under v1, positions [0, P+k-1) hold v1 KV
    and token k's own KV (position P+k-1) is computed by v2 in the first step after the update:
    boundary = P + k - 1 (`keep_boundary`). boundary = 0: all v2; >= len: all v1.

    Args:
        old_path, new_path: the two checkpoints (same architecture and tokenizer).
        head_dtype: "float32" (lm_head in fp32, as trainers do) or "model".
        dtype: torch dtype name the models run in ("bfloat16", "float32"; None = checkpoint's).
    """

    def __init__(self, old_path: str, new_path: str, head_dtype: str = "float32",
                 dtype: str | None = None):
        self.paths = (str(old_path), str(new_path))
        self.head_dtype = head_dtype
        self.dtype = dtype
        self._models = None

    def _load(self):
        if self._models is None:
            import torch
            from transformers import AutoModelForCausalLM

            dtype = getattr(torch, self.dtype) if self.dtype else "auto"
            models = []
            for path in self.paths:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
                head = model.get_output_embeddings().weight.detach()
                models.append((model, head.float() if self.head_dtype == "float32" else head))
            self._models = models
        return self._models

    def _logits(self, model_head, hidden):
        _, head = model_head
        if self.head_dtype == "float32":
            return hidden.float() @ head.T
        return (hidden @ head.T).float()

    def score(self, prompt: list[int], tokens: list[int], boundary: int,
              sampling: SamplingSpec) -> np.ndarray:
        """Processed logprob of each completion token (positions < boundary by the old weights,
        the rest by the new weights over the old KV)."""
        import torch

        with torch.inference_mode():
            return self._score(prompt, tokens, boundary, sampling)

    def _score(self, prompt, tokens, boundary, sampling) -> np.ndarray:
        import torch

        from parity.reference import process_logits

        if not tokens:
            return np.zeros(0)
        old, new = self._load()
        seq = list(prompt) + list(tokens)
        ids = torch.tensor([seq])
        b = max(0, min(int(boundary), len(seq)))
        first, last = len(prompt) - 1, len(seq) - 1  # positions predicting the completion
        parts, cache = [], None
        if b > 0:
            out = old[0].base_model(input_ids=ids[:, :b], use_cache=b < len(seq))
            cache = out.past_key_values
            rows = out.last_hidden_state[0, first:min(b, last)]
            if len(rows):
                parts.append(self._logits(old, rows))
        if b < len(seq):
            out = new[0].base_model(input_ids=ids[:, b:], past_key_values=cache,
                                    use_cache=cache is not None)
            lo = max(first, b) - b
            rows = out.last_hidden_state[0, lo:last - b]
            if len(rows):
                parts.append(self._logits(new, rows))
        logits = torch.cat(parts)
        logp = process_logits(logits, sampling).log_softmax(dim=-1)
        target = torch.tensor(tokens).unsqueeze(-1)
        return logp.gather(-1, target).squeeze(-1).double().numpy()

    def old(self, prompt, tokens, sampling) -> np.ndarray:
        """Everything under the old weights."""
        return self.score(prompt, tokens, len(prompt) + len(tokens), sampling)

    def new(self, prompt, tokens, sampling) -> np.ndarray:
        """Everything under the new weights (full recompute)."""
        return self.score(prompt, tokens, 0, sampling)

    def keep(self, prompt, tokens, k: int, sampling) -> np.ndarray:
        """Keep semantics: k tokens sampled under the old weights, the rest by the new weights
        over the old KV of everything computed before the update."""
        return self.score(prompt, tokens, keep_boundary(len(prompt), k), sampling)

    def recompute(self, prompt, tokens, k: int, sampling) -> np.ndarray:
        """Recompute semantics: k tokens under the old weights, then the new weights over the
        whole sequence recomputed (no old KV)."""
        out = self.new(prompt, tokens, sampling)
        if k > 0:
            out[:k] = self.old(prompt, tokens[:k], sampling)
        return out


def keep_boundary(n_prompt: int, k: int) -> int:
    """First position whose KV the new weights compute when the update lands after k sampled
    tokens (0 when the request had not been prefilled)."""
    return n_prompt + k - 1 if k > 0 else 0


def cached_boundary(n_prompt: int, block_size: int) -> int:
    """Prompt tokens a full prefix-cache hit serves: whole blocks, never the last prompt token
    (the engine recomputes it to get logits)."""
    return ((n_prompt - 1) // block_size) * block_size if block_size > 0 else 0


# ----------------------------------------------------------------------------- the engine side


def target_path(sc, model_path: str, log=print) -> str:
    """The checkpoint a scenario updates to (a perturbed copy of its model unless named)."""
    from parity.models import perturb, resolve_model

    spec: UpdateSpec = sc.update
    if spec.target:
        return str(resolve_model(spec.target, log=log))
    return str(perturb(model_path, spec.seed, spec.scale, log=log))


def _block_size(er) -> int:
    raw = (er.effective_config or {}).get("raw") or {}
    return int((raw.get("cache_config") or {}).get("block_size") or 16)


def shared_context(prompts: list[list[int]], n: int) -> list[int]:
    """n tokens of context shared by every prompt: the prompts' own tokens, concatenated and
    repeated as needed (any valid token ids serve: the point is whole cached blocks)."""
    pool = [t for p in prompts for t in p]
    return [pool[i % len(pool)] for i in range(n)] if pool and n > 0 else []


def drive(engine, res, role: str, prompts: list[list[int]], log) -> None:
    """Run the scenario's probe on a live engine; fills res.runs[role] (sequences after the
    update; extra: before-update sequences, the update record, the target checkpoint). The
    engine is returned to the scenario's model afterwards, for the scenarios that follow."""
    sc, er = res.scenario, res.runs[role]
    base = res.model_path
    target = target_path(sc, base, log)
    er.extra.update(target=target, probe=sc.probe)
    if getattr(engine, "checkpoint", None) not in (None, base):
        engine.update_weights(base, clear_cache=True)  # a previous scenario left other weights
    try:
        _probe(engine, sc, er, prompts, target, log)
    except BaseException:
        try:  # keep the original error; the engine may be gone
            engine.update_weights(base, clear_cache=True)
        except Exception:
            pass
        raise
    engine.update_weights(base, clear_cache=True)


def _probe(engine, sc, er, prompts: list[list[int]], target: str, log) -> None:
    """The engine work of one probe: generate, update, generate (or all at once in flight)."""
    spec: UpdateSpec = sc.update
    if sc.probe == "inflight":
        seqs, rec = engine.generate_with_update(
            prompts, sc.sampling, target, spec.after_tokens, spec.mode, spec.clear_cache,
            spec.via, spec.ignore_eos)
        er.sequences = seqs
    else:
        if sc.probe == "stale_cache":
            n = spec.context_tokens if spec.context_tokens is not None else _block_size(er)
            context = shared_context(prompts, n)
            prompts = [context + p for p in prompts]
            er.extra["context_tokens"] = len(context)
        er.extra["before"] = engine.generate(prompts, sc.sampling)
        rec = engine.update_weights(target, spec.mode, spec.clear_cache, spec.via)
        er.sequences = engine.generate(prompts, sc.sampling)
    er.extra["update"] = rec
    log(f"  update {rec.get('version_before')} -> {rec.get('version')} via {spec.via}: "
        f"{1000 * rec.get('latency_s', float('nan')):.1f} ms")


# ----------------------------------------------------------------------------- judging


def _engine_dtype(er) -> str | None:
    value = str(((er.effective_config or {}).get("key") or {}).get("dtype") or "")
    name = value.replace("torch.", "")
    return name if name in ("float32", "bfloat16", "float16") else None


def _seq_means(per_seq: list[np.ndarray]) -> np.ndarray:
    return np.array([float(np.mean(x)) for x in per_seq if len(x)])


def _gap(eng: list[np.ndarray], ref: list[np.ndarray]) -> list[np.ndarray]:
    return [np.abs(np.asarray(e, dtype=np.float64) - r) for e, r in zip(eng, ref)]


def _mean(per_seq: list[np.ndarray]) -> float:
    flat = np.concatenate([x for x in per_seq if len(x)]) if any(len(x) for x in per_seq) \
        else np.zeros(0)
    return float(flat.mean()) if len(flat) else float("nan")


def _threshold(name: str, per_seq: list[np.ndarray], tol: float) -> Finding:
    test = stats.threshold(_seq_means(per_seq), tol)
    return Finding(name, test.outcome, _mean(per_seq), tol, test.to_dict(), test.reason)


def _separation(name: str, a: list[np.ndarray], b: list[np.ndarray], tol: float,
                why: str) -> Finding:
    value = _mean(_gap(a, b))
    ok = np.isfinite(value) and value >= SEPARATION * tol
    return Finding(name, "pass" if ok else "inconclusive", value, SEPARATION * tol,
                   note="" if ok else why)


def _effect(gap_old: float, gap_new: float) -> float:
    """0 = the engine still follows the old weights, 1 = the new ones."""
    total = gap_old + gap_new
    return float(gap_old / total) if total > 0 else float("nan")


def update_summary(rec: dict) -> dict[str, Any]:
    """Latency and version lag of one update record, for the report."""
    lags = [x for x in rec.get("lag_tokens") or [] if x is not None]
    return {"latency_s": rec.get("latency_s"), "pause_s": rec.get("pause_s"),
            "load_s": rec.get("load_s"), "resume_s": rec.get("resume_s"),
            "version_before": rec.get("version_before"), "version_after": rec.get("version"),
            "via": rec.get("via"), "mechanism": rec.get("mechanism"),
            "cache_cleared": rec.get("cache_cleared"),
            "lag_tokens_mean": float(np.mean(lags)) if lags else None,
            "lag_tokens_max": int(max(lags)) if lags else None}


def _timing_text(s: dict) -> str:
    text = (f"update latency {1000 * (s['latency_s'] or 0):.1f} ms (pause "
            f"{1000 * (s['pause_s'] or 0):.1f}, load {1000 * (s['load_s'] or 0):.1f}, resume "
            f"{1000 * (s['resume_s'] or 0):.1f})")
    if s["lag_tokens_mean"] is not None:
        text += (f"; version lag {s['lag_tokens_mean']:.2f} tokens per request (max "
                 f"{s['lag_tokens_max']}) sampled under the old weights after the update was "
                 "requested")
    return text


def judge(res, refs) -> tuple[Verdict, dict[str, Any]]:
    """The scenario's verdict (outcome, diagnosis, findings) and detail (gaps, latency, lag).

    Diagnoses: no_effect (the engine does not compute with the new weights: still the old ones,
    or a mix when only part of the update landed), stale_prefix_cache (cached prompt KV from
    before the update), semantics_mismatch (in-flight requests continue with the other semantics
    than expected), wrong_version_labels, wrong_mode (wait/abort sampled in-flight tokens under
    the new weights), reference_mismatch (the engine did not match the old weights before the
    update, so nothing after it can be judged).
    """
    sc = res.scenario
    er = res.runs["candidate"]
    if er.error or not er.sequences:
        return Verdict("unresolved", "no_samples", "the engine returned no sequences"), {}
    tol = sc.tolerances.get("abs_dlogp_mean", DEFAULT_TOLERANCE)
    scorer = SplitScorer(res.model_path, er.extra["target"], sc.head_dtype, _engine_dtype(er))
    summary = update_summary(er.extra.get("update") or {})
    detail: dict[str, Any] = {"probe": sc.probe, "update": summary,
                              "spec": asdict(sc.update), "target": er.extra["target"],
                              "reference_dtype": scorer.dtype or "checkpoint"}
    if sc.probe == "inflight":
        verdict = _judge_inflight(sc, er, scorer, tol, detail)
    else:
        verdict = _judge_between(sc, er, scorer, tol, detail)
    verdict.message += "; " + _timing_text(summary)
    gaps = [(k.removeprefix("abs_dlogp_").replace("_vs_", " vs "), v) for k, v in detail.items()
            if k.startswith(("abs_dlogp_after", "abs_dlogp_post")) and isinstance(v, float)]
    detail["headline"] = ", ".join(f"|dlogp| {k} {v:.3g}" for k, v in gaps[:3]) or sc.probe
    inplace = (er.extra.get("update") or {}).get("skipped")
    if inplace:
        detail["inplace_skipped"] = inplace
        verdict.message += (f"; in-place copy could not reach {len(inplace)} parameter(s) (their "
                            "storage was replaced at load, e.g. emptied by the CPU GEMM repack)")
    n_tokens = sum(len(s.token_ids) for s in er.sequences)
    if n_tokens < sc.min_tokens:
        verdict.findings.append(Finding("n_tokens", "inconclusive", n_tokens, sc.min_tokens,
                                        note=f"only {n_tokens} sampled tokens"))
        verdict.outcome = combine(verdict.findings)
    return verdict, detail


def _judge_between(sc, er, scorer: SplitScorer, tol: float, detail: dict) -> Verdict:
    """takes_effect and stale_cache: a generate call before the update, the same after it."""
    sampling = sc.sampling
    before, after = er.extra["before"], er.sequences
    old_b = [scorer.old(s.prompt_token_ids, s.token_ids, sampling) for s in before]
    old_a = [scorer.old(s.prompt_token_ids, s.token_ids, sampling) for s in after]
    new_a = [scorer.new(s.prompt_token_ids, s.token_ids, sampling) for s in after]
    eng_b = [s.logprobs for s in before]
    eng_a = [s.logprobs for s in after]
    gap_before = _gap(eng_b, old_b)
    gap_old, gap_new = _gap(eng_a, old_a), _gap(eng_a, new_a)
    version = (er.extra.get("update") or {}).get("version")
    labels_ok = [all(v == version for v in (s.weight_versions or [])) for s in after]
    findings = [
        _threshold("abs_dlogp_before_vs_old", gap_before, tol),
        _separation("old_new_separation", old_a, new_a, tol,
                    "the new weights are too close to the old ones to tell them apart: raise "
                    "update.scale"),
        _threshold("abs_dlogp_after_vs_new", gap_new, tol),
        Finding("version_labels", "pass" if all(labels_ok) else "fail",
                float(np.mean(labels_ok)), 1.0,
                note="" if all(labels_ok) else "tokens sampled after the update are not "
                                               f"labelled with its version {version}"),
    ]
    g_old, g_new = _mean(gap_old), _mean(gap_new)
    effect = _effect(g_old, g_new)
    detail.update(abs_dlogp_before_vs_old=_mean(gap_before), abs_dlogp_after_vs_old=g_old,
                  abs_dlogp_after_vs_new=g_new, effect=effect)
    stale_text = ""
    g_stale = None
    if sc.probe == "stale_cache":
        # The stale hypothesis: every whole block of the prompt served from a cache filled
        # before the update (what the engine reports it actually served is kept as evidence).
        bs = _block_size(er)
        cached = [cached_boundary(len(s.prompt_token_ids), bs) for s in after]
        stale = [scorer.score(s.prompt_token_ids, s.token_ids, c, sampling)
                 for s, c in zip(after, cached)]
        g_stale = _mean(_gap(eng_a, stale))
        findings.insert(2, _separation(
            "stale_fresh_separation", stale, new_a, tol,
            "KV from the old weights would barely change these logprobs (prompts shorter than "
            "a cache block, or a small update): the probe cannot see a stale cache"))
        detail.update(abs_dlogp_after_vs_stale=g_stale, cached_tokens_hypothesis=cached,
                      cached_tokens_engine=[s.num_cached_tokens for s in after],
                      context_tokens=er.extra.get("context_tokens"), block_size=bs,
                      prefix_caching=((er.effective_config or {}).get("key") or {}).get(
                          "enable_prefix_caching"))
        stale_text = f", to the stale-cache prediction {g_stale:.3g}"
    outcome = combine(findings)
    gaps = (f"mean |dlogp| after the update to the new weights {g_new:.3g}, to the old "
            f"{g_old:.3g}{stale_text} (tolerance {tol:g}); effect {effect:.2f} (0 = old, "
            "1 = new)")
    by_name = {f.name: f for f in findings}
    if outcome == "pass":
        return Verdict("pass", None, f"the update took effect: {gaps}", findings)
    if by_name["abs_dlogp_before_vs_old"].outcome == "fail":
        diagnosis, why = "reference_mismatch", (
            "the engine did not match the trainer on the old weights before the update, so the "
            "update cannot be judged: check the model, dtype and logprobs mode first")
    elif g_stale is not None and g_stale < g_new and by_name["abs_dlogp_after_vs_new"].outcome \
            == "fail":
        diagnosis, why = "stale_prefix_cache", (
            "prefix cache reused KV from before the update: disable prefix caching or reset it "
            "(pause_generation(clear_cache=True) or reset_prefix_cache() after the load)")
    elif by_name["abs_dlogp_after_vs_new"].outcome == "fail":
        diagnosis, why = "no_effect", (
            "the update did not take effect: "
            + ("the engine still samples from the old weights" if g_old <= tol else
               f"the engine samples from neither the new nor the old weights (effect "
               f"{effect:.2f}): only part of the update reached the weights it computes with")
            + "; load through the engine's reload path (collective_rpc('reload_weights')) "
              "instead of writing into parameters")
    elif by_name["version_labels"].outcome == "fail":
        diagnosis, why = "wrong_version_labels", by_name["version_labels"].note
    else:
        diagnosis, why = None, "not enough evidence to decide"
    return Verdict(outcome, diagnosis, f"{why}: {gaps}", findings)


def _judge_inflight(sc, er, scorer: SplitScorer, tol: float, detail: dict) -> Verdict:
    """inflight: split each sequence at its weight-version labels; tokens before must match the
    old weights, tokens after the keep or the recompute prediction."""
    sampling = sc.sampling
    rec = er.extra.get("update") or {}
    old_version = rec.get("version_before")
    seqs = er.sequences
    ks = [sum(1 for v in (s.weight_versions or []) if v == old_version) for s in seqs]
    monotone = [list(s.weight_versions or []) == sorted(s.weight_versions or []) for s in seqs]
    pre_eng, pre_ref, post_eng, post_keep, post_rec, post_old = [], [], [], [], [], []
    label_bad = 0
    for s, k in zip(seqs, ks):
        p, t = s.prompt_token_ids, s.token_ids
        old = scorer.old(p, t, sampling)
        new = scorer.new(p, t, sampling)
        keep = scorer.keep(p, t, k, sampling)
        recompute = np.concatenate([old[:k], new[k:]])
        eng = np.asarray(s.logprobs, dtype=np.float64)
        pre_eng.append(eng[:k])
        pre_ref.append(old[:k])
        post_eng.append(eng[k:])
        post_keep.append(keep[k:])
        post_rec.append(recompute[k:])
        post_old.append(old[k:])
        if 0 < k < len(t):
            label_bad += _label_off(scorer, s, k, eng, old, new, sampling, tol)
    n_post = sum(len(x) for x in post_eng)
    g_keep = _mean(_gap(post_eng, post_keep))
    g_rec = _mean(_gap(post_eng, post_rec))
    g_old = _mean(_gap(post_eng, post_old))
    sep = _mean(_gap(post_keep, post_rec))
    findings = [_threshold("abs_dlogp_pre_vs_old", _gap(pre_eng, pre_ref), tol)]
    if sc.update.mode in ("wait", "abort"):
        semantics = "n/a"
        if n_post:
            findings.append(Finding("post_update_tokens", "fail", n_post, 0,
                                    note=f"mode {sc.update.mode} must not sample in-flight "
                                         "tokens under the new weights"))
    else:
        expected = sc.update.expect_semantics
        findings.append(Finding("post_update_tokens", "pass" if n_post else "inconclusive",
                                n_post, 1, note="" if n_post else
                                "every request finished before the update: raise max_tokens"))
        findings.append(_separation("keep_recompute_separation", post_keep, post_rec, tol,
                                    "keep and recompute predict nearly the same logprobs here: "
                                    "raise update.scale or update.after_tokens"))
        findings.append(_threshold(f"abs_dlogp_post_vs_{expected}",
                                   _gap(post_eng, post_keep if expected == "keep" else post_rec),
                                   tol))
        close = sep >= SEPARATION * tol
        semantics = ("keep" if g_keep < g_rec else "recompute") if close else "indistinguishable"
    findings.append(Finding("version_labels", "pass" if not label_bad and all(monotone)
                            else "fail", float(label_bad), 0,
                            note="" if not label_bad and all(monotone) else
                            f"{label_bad} sequence(s) whose version labels put the update at the "
                            "wrong token (the reference fits another split clearly better)"))
    detail.update(semantics=semantics, abs_dlogp_pre_vs_old=_mean(_gap(pre_eng, pre_ref)),
                  abs_dlogp_post_vs_keep=g_keep, abs_dlogp_post_vs_recompute=g_rec,
                  abs_dlogp_post_vs_old=g_old, keep_recompute_separation=sep,
                  n_pre_tokens=sum(ks), n_post_tokens=n_post,
                  tokens_before_update=ks, seen_at_request=rec.get("seen_at_request"),
                  effect=_effect(g_old, min(g_keep, g_rec)) if n_post else None)
    outcome = combine(findings)
    gaps = (f"{sum(ks)} tokens before the update, {n_post} after; after it, mean |dlogp| to "
            f"keep {g_keep:.3g}, to recompute {g_rec:.3g}, to the old weights {g_old:.3g} "
            f"(keep vs recompute differ by {sep:.3g}; tolerance {tol:g})")
    head = (f"in-flight requests continue with {semantics.upper()} semantics" if semantics
            not in ("n/a", "indistinguishable") else
            f"semantics {semantics} (mode {sc.update.mode})")
    by_name = {f.name: f for f in findings}
    if outcome == "pass":
        return Verdict("pass", None, f"{head}: {gaps}", findings)
    post = by_name.get(f"abs_dlogp_post_vs_{sc.update.expect_semantics}")
    if by_name["abs_dlogp_pre_vs_old"].outcome == "fail":
        diagnosis, why = "reference_mismatch", (
            "tokens sampled before the update do not match the old weights: check the model, "
            "dtype and logprobs mode first")
    elif post is not None and post.outcome == "fail" and semantics in SEMANTICS:
        if g_old < min(g_keep, g_rec):
            diagnosis, why = "no_effect", ("the update did not take effect for the in-flight "
                                           "requests: they still sample from the old weights")
        else:
            diagnosis, why = "semantics_mismatch", (
                f"in-flight requests continue with {semantics.upper()} semantics, the scenario "
                f"expects {sc.update.expect_semantics}"
                + (" (their KV was recomputed: a cache reset with running requests preempts "
                   "them)" if semantics == "recompute" else ""))
    elif by_name["version_labels"].outcome == "fail":
        diagnosis, why = "wrong_version_labels", by_name["version_labels"].note
    elif by_name.get("post_update_tokens") and by_name["post_update_tokens"].outcome == "fail":
        diagnosis, why = "wrong_mode", by_name["post_update_tokens"].note
    else:
        diagnosis, why = None, "not enough evidence to decide"
    return Verdict(outcome, diagnosis, f"{why}: {gaps}", findings)


def _label_off(scorer, s: Sequence, k: int, eng, old, new, sampling, tol) -> int:
    """1 when the version labels put the update at the wrong token: a split one token earlier
    or later fits the engine's logprobs clearly better (by more than 2 * `tol` summed over the
    sequence) than the labelled split, under whichever semantics fits it best."""
    p, t = s.prompt_token_ids, s.token_ids

    def fit(kk: int) -> float:
        keep = scorer.keep(p, t, kk, sampling)
        recompute = np.concatenate([old[:kk], new[kk:]])
        return min(float(np.abs(eng - keep).sum()), float(np.abs(eng - recompute).sum()))

    labelled = fit(k)
    others = [fit(kk) for kk in (k - 1, k + 1) if 0 <= kk <= len(t)]
    return int(bool(others) and min(others) < labelled - 2 * max(tol, 1e-3))
