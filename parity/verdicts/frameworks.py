"""The health numbers RL frameworks log about the rollout engine against the trainer, computed on
parity's tokens (trainer logprob vs engine logprob of each sampled token, per sequence), each
with the gate the framework documents. Pure numpy.

A framework's numbers are metrics: shown with their gate met or not. They become findings (which
can fail the verdict) only when asked for by name (`gates`, `--gate NAME`): `findings()`.
Each definition and gate is the framework's own (docs/frameworks.md names repository, file and
function); r = trainer - engine is the log importance ratio log(pi_train / pi_rollout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.verdicts import core
from parity.verdicts.fmt import fmt
from parity.verdicts.metrics import both_probabilities

NEMO, PRIME, VERL, TRL, IS = "nemo-rl", "prime-rl", "verl", "trl", "is-correction"
FRAMEWORKS = (NEMO, PRIME, VERL, TRL, IS)
# The frameworks whose gates can be asked for as findings (is-correction has no gate: it only
# shows what a correction would do).
GATEABLE = (NEMO, PRIME, VERL)
# verl's rollout correction: the default token IS threshold (truncation cap; its reciprocal is
# the lower end of the std/ESS clamp) and the safety clamp on log ratios before exp().
VERL_IS_THRESHOLD = 2.0
VERL_SAFETY_BOUND = 20.0
# TRL GRPOTrainer's vLLM importance-sampling correction at its defaults: on, mode
# "sequence_mask", clip_max 3.0, clip_min None (a sequence ratio exp(sum r) above 3 is zeroed).
TRL_CLIP_MAX = 3.0
# The importance-sampling corrections the user may run: token TIS cap, ICEPOP band, and a
# sequence mask on the sequence ratio exp(sum r) outside [1/c, c].
TIS_CAP = 2.0
ICEPOP_BAND = (0.5, 2.0)
SEQ_MASK = 3.0


@dataclass(frozen=True)
class Gate:
    """A framework's documented health gate on one of its numbers: `low <= value <= high`."""

    metric: str
    low: float = -math.inf
    high: float = math.inf
    source: str = ""

    def met(self, value: float | None) -> bool | None:
        """Whether value is inside the gate; None when not measured."""
        if value is None or not math.isfinite(value):
            return None
        return self.low <= value <= self.high

    def text(self) -> str:
        if self.low == -math.inf:
            return f"<= {fmt(self.high, 4)}"
        if self.high == math.inf:
            return f">= {fmt(self.low, 4)}"
        return f"in [{fmt(self.low, 4)}, {fmt(self.high, 4)}]"


GATES: dict[str, tuple[Gate, ...]] = {
    NEMO: (
        Gate("token_mult_prob_error", high=1.05, source="nemo_rl/algorithms/grpo.py"),
        Gate("gen_kl_error", high=1e-3, source="docs/guides/grpo.md"),
    ),
    PRIME: (Gate("mismatch_kl_mean", high=0.015, source="docs/development.md"),),
    VERL: (
        Gate("rollout_is_mean", low=0.5, high=2.0, source="docs/algo/rollout_corr.md"),
        Gate("rollout_is_eff_sample_size", low=0.3, source="docs/algo/rollout_corr.md"),
        Gate("rollout_is_std", high=1.0, source="docs/algo/rollout_corr.md"),
        Gate("kl", low=-0.1, high=0.1, source="docs/algo/rollout_corr.md"),
        Gate("chi2_token", high=1.0, source="docs/algo/rollout_corr.md"),
    ),
    TRL: (),
    IS: (),
}
# The findings `findings()` can emit, by gate name (each a bound, or verl's warnings counted).
FINDINGS = {
    NEMO: {"nemo_rl_token_mult_prob_error": "bound", "nemo_rl_gen_kl_error": "bound"},
    PRIME: {"prime_rl_mismatch_kl": "bound"},
    VERL: {"verl_health_warnings": "count_limit"},
}
# The engine role whose gate findings carry no prefix (another role's are "<role>.<name>").
CANDIDATE = "candidate"
# A verdict's diagnosis when a gate asked for fails and parity's own findings do not; every
# category that scores tokens declares it (so a negative control can expect it).
DIAGNOSIS = "framework_gate"
FIX = (
    "an engine's logprobs miss a health gate of the trainer framework named (the finding's "
    "prefix names the engine role, none: the candidate); the gaps behind it are parity's own "
    "findings' (see the category's diagnosis and docs/frameworks.md)"
)


def finding_name(name: str, role: str = CANDIDATE) -> str:
    """A gate finding's name for an engine role: the candidate's bare, another's prefixed."""
    return name if role == CANDIDATE else f"{role}.{name}"


def declared(roles: tuple[str, ...] = (CANDIDATE,)) -> dict[str, str]:
    """Every gate finding the engine roles `roles` can get, name -> kind (a category's
    `findings` declaration)."""
    return {
        finding_name(name, role): kind
        for role in roles
        for per_gate in FINDINGS.values()
        for name, kind in per_gate.items()
    }


def _pairs(
    trainer: list[np.ndarray], engine: list[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Per sequence, the tokens both sides give a probability's logprob
    (metrics.both_probabilities: finite and not a mask's fill value; the tokens parity's own
    means use, as the frameworks' masks drop padding); sequences left empty are dropped. Also the count of tokens
    dropped (judged by engine_neginf, absurd_logprob and the excluded rate)."""
    tr_out, en_out, dropped = [], [], 0
    for t, e in zip(trainer, engine):
        t, e = np.asarray(t, np.float64), np.asarray(e, np.float64)
        ok = both_probabilities(t, e)
        dropped += int(ok.size - ok.sum())
        if ok.any():
            tr_out.append(t[ok])
            en_out.append(e[ok])
    return tr_out, en_out, dropped


def nemo_rl(r: np.ndarray) -> dict[str, float]:
    """NeMo-RL ClippedPGLossFn: token_mult_prob_error = mean exp|r|; gen_kl_error = mean k3 of
    logr = trainer - engine (its default kl_type), i.e. exp(r) - 1 - r; policy_kl_error the
    same with the sides swapped."""
    return {
        "token_mult_prob_error": float(np.mean(np.exp(np.abs(r)))),
        "gen_kl_error": float(np.mean(np.expm1(r) - r)),
        "policy_kl_error": float(np.mean(np.expm1(-r) + r)),
    }


def prime_rl(r: np.ndarray, entropy: np.ndarray | None = None) -> dict[str, float]:
    """prime-rl: mismatch_kl = exp(r) - r - 1 per token (r = trainer - inference), its mean, std
    and max; kl_ent_ratio = mean mismatch_kl / mean entropy when the trainer's entropy is known."""
    k = np.expm1(r) - r
    out = {
        "mismatch_kl_mean": float(k.mean()),
        "mismatch_kl_std": float(k.std()),
        "mismatch_kl_max": float(k.max()),
    }
    if entropy is not None and entropy.size and np.nanmean(entropy) > 0:
        out["kl_ent_ratio"] = out["mismatch_kl_mean"] / float(np.nanmean(entropy))
    return out


def verl(tr: list[np.ndarray], en: list[np.ndarray]) -> dict[str, float]:
    """verl's rollout correction at its defaults (token-level IS, threshold 2): IS weight mean
    (before truncation), std and ESS (weights clamped to [1/2, 2]), fractions beyond the
    threshold; and its off-policy metrics: kl (k1, rollout - training), k3_kl, the two
    perplexities and ppl_ratio (per-sequence, then averaged), chi2_token and chi2_seq."""
    c = VERL_IS_THRESHOLD
    r = np.concatenate(tr) - np.concatenate(en)
    w = np.exp(np.clip(r, -VERL_SAFETY_BOUND, VERL_SAFETY_BOUND))
    wc = np.clip(w, 1.0 / c, c)
    norm = wc / (wc.mean() + 1e-8)
    mean_tr = np.array([t.mean() for t in tr])
    mean_en = np.array([e.mean() for e in en])
    log_ppl_diff = mean_en - mean_tr
    seq_sum = np.array([(t - e).sum() for t, e in zip(tr, en)])
    seq_sum = np.clip(seq_sum, -VERL_SAFETY_BOUND, VERL_SAFETY_BOUND)
    return {
        "rollout_is_mean": float(w.mean()),
        "rollout_is_std": float(np.sqrt(max(float(np.mean(wc**2) - wc.mean() ** 2), 0.0)))
        if w.size > 1
        else 0.0,
        "rollout_is_eff_sample_size": float(1.0 / np.mean(norm**2)),
        "rollout_is_ratio_fraction_high": float(np.mean(w > c)),
        "rollout_is_ratio_fraction_low": float(np.mean(w < 1.0 / c)),
        "kl": float(-r.mean()),
        "k3_kl": float(np.mean(np.expm1(r) - r)),
        "training_ppl": float(np.mean(np.exp(-mean_tr))),
        "rollout_ppl": float(np.mean(np.exp(-mean_en))),
        "ppl_ratio": float(np.mean(np.exp(log_ppl_diff))),
        "chi2_token": float(np.mean(w**2) - 1.0),
        "chi2_seq": float(np.mean(np.exp(2.0 * seq_sum)) - 1.0),
    }


def trl(tr: list[np.ndarray], en: list[np.ndarray]) -> dict[str, float]:
    """TRL GRPOTrainer's sampling metrics at its defaults (sequence_mask, clip_max 3): the mean
    and max of abs(r) over tokens (sampling_logp_difference), and the min / mean / max of the
    sequence ratios exp(sum r) after the mask (above 3: 0), with the share of sequences masked."""
    r = np.concatenate(tr) - np.concatenate(en)
    ratio = np.exp(np.array([(t - e).sum() for t, e in zip(tr, en)]))
    masked = ratio > TRL_CLIP_MAX
    kept = np.where(masked, 0.0, ratio)
    return {
        "sampling_logp_difference_mean": float(np.abs(r).mean()),
        "sampling_logp_difference_max": float(np.abs(r).max()),
        "importance_sampling_ratio_min": float(kept.min()),
        "importance_sampling_ratio_mean": float(kept.mean()),
        "importance_sampling_ratio_max": float(kept.max()),
        "sequence_masked": float(masked.mean()),
    }


def is_correction(tr: list[np.ndarray], en: list[np.ndarray]) -> dict[str, float]:
    """What an importance-sampling correction would do to these tokens: the share of tokens (and
    of sequences with at least one such token) truncated at the token TIS cap, masked by the
    ICEPOP band, and the share of sequences a sequence mask drops (exp(sum r) outside
    [1/c, c])."""
    r_seq = [t - e for t, e in zip(tr, en)]
    lo, hi = np.log(ICEPOP_BAND[0]), np.log(ICEPOP_BAND[1])
    tis = [r > np.log(TIS_CAP) for r in r_seq]
    ice = [(r < lo) | (r > hi) for r in r_seq]
    seq = np.array([abs(r.sum()) > np.log(SEQ_MASK) for r in r_seq])
    n = sum(r.size for r in r_seq)
    return {
        "tis_token_truncated": sum(int(m.sum()) for m in tis) / n,
        "tis_sequence_truncated": float(np.mean([m.any() for m in tis])),
        "icepop_token_masked": sum(int(m.sum()) for m in ice) / n,
        "icepop_sequence_masked": float(np.mean([m.any() for m in ice])),
        "seq_mask_sequence_masked": float(seq.mean()),
    }


def compute(
    trainer: list[np.ndarray],
    engine: list[np.ndarray],
    entropy: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Every framework's numbers on these tokens, per framework, with n_tokens, n_sequences and
    n_dropped (tokens with a non-finite or fill-value logprob on either side, judged elsewhere). No token with
    two finite logprobs: each framework's numbers are empty."""
    tr, en, dropped = _pairs(trainer, engine)
    out: dict[str, Any] = {
        "n_tokens": sum(t.size for t in tr),
        "n_sequences": len(tr),
        "n_dropped": dropped,
    }
    if not tr:
        return {**out, **{name: {} for name in FRAMEWORKS}}
    r = np.concatenate(tr) - np.concatenate(en)
    ent = None
    if entropy is not None:
        flat = np.concatenate([np.asarray(x, np.float64) for x in entropy]) if entropy else None
        ent = flat[np.isfinite(flat)] if flat is not None else None
    return {
        **out,
        NEMO: nemo_rl(r),
        PRIME: prime_rl(r, ent),
        VERL: verl(tr, en),
        TRL: trl(tr, en),
        IS: is_correction(tr, en),
    }


def gate_rows(numbers: dict[str, Any], framework: str) -> list[dict[str, Any]]:
    """One framework's gates on these numbers: metric, value, gate text, met (None: not
    measured), source."""
    values = numbers.get(framework) or {}
    return [
        {
            "metric": g.metric,
            "value": values.get(g.metric),
            "gate": g.text(),
            "met": g.met(values.get(g.metric)),
            "source": g.source,
        }
        for g in GATES[framework]
    ]


def with_gates(numbers: dict[str, Any]) -> dict[str, Any]:
    """compute()'s numbers with each framework's gate rows under "gates" (report.json's shape)."""
    return {**numbers, "gates": {f: gate_rows(numbers, f) for f in GATEABLE}}


def order(first: str | None) -> tuple[str, ...]:
    """The frameworks in display order: `first` (a --format name) first when it has numbers."""
    if first in FRAMEWORKS:
        return (first, *(f for f in FRAMEWORKS if f != first))
    return FRAMEWORKS


def check_names(names: list[str]) -> list[str]:
    """The names that are not a gateable framework (for the callers' problem lists)."""
    return [n for n in names if n not in GATEABLE]


def findings(
    numbers: dict[str, Any], names: list[str], role: str = CANDIDATE
) -> list[core.Finding]:
    """The asked-for frameworks' gates on one engine role's numbers as findings (named by
    finding_name): NeMo-RL's two bounds, prime-rl's bound, and verl's health warnings as a count
    limit of 0 (verl reports a batch healthy when none fires). A gate on nothing measured is
    inconclusive."""
    out: list[core.Finding] = []
    n = numbers.get("n_tokens", 0)
    who = "" if role == CANDIDATE else f"{role} engine: "
    for name in dict.fromkeys(names):
        rows = {r["metric"]: r for r in gate_rows(numbers, name)}
        if name == NEMO:
            for metric in ("token_mult_prob_error", "gen_kl_error"):
                found = finding_name(f"nemo_rl_{metric}", role)
                out.append(_bound(found, rows[metric], n, who + "NeMo-RL"))
        elif name == PRIME:
            found = finding_name("prime_rl_mismatch_kl", role)
            out.append(_bound(found, rows["mismatch_kl_mean"], n, who + "prime-rl"))
        elif name == VERL:
            out.append(_warnings(finding_name("verl_health_warnings", role), rows, n, who))
    return out


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _bound(name: str, row: dict[str, Any], n: int, who: str) -> core.Finding:
    gate = next(g for gates in GATES.values() for g in gates if g.metric == row["metric"])
    note = f"{who} {row['metric']} over {n} tokens, gate {row['gate']} ({row['source']})"
    return core.bound(name, _nan(row["value"]), gate.high, note)


def _warnings(name: str, rows: dict[str, dict[str, Any]], n: int, who: str) -> core.Finding:
    if any(r["met"] is None for r in rows.values()):
        return core.Finding(name, "count_limit", "inconclusive", None, 0, note=who + "not measured")
    fired = [f"{m} {fmt(r['value'], 4)} not {r['gate']}" for m, r in rows.items() if not r["met"]]
    note = f"{who}verl rollout-correction health over {n} tokens: " + (
        "; ".join(fired) if fired else "no warning"
    )
    return core.count_limit(name, len(fired), 0, len(rows), note)
