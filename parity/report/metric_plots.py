"""The plots of report.html drawn from report.json's data (each role's metrics, the findings'
intervals, the lm_head and weight-update evidence): pure functions to SVG text, or None when the
data for a plot is absent."""

from __future__ import annotations

import math
import re
from typing import Any

from parity.report.plots import colour, figure, log_scale, mark, svg

RL_METRICS = (
    ("kl_k3_mean", "k3 KL"),
    ("abs_dlogp_mean", "|dlogp|"),
    ("clip_rate_token", "clip rate"),
    ("entropy_ref_mean", "entropy"),
    ("reward_mean", "reward"),
)


def rl_side_by_side(per_role: dict[str, dict[str, Any]], key: str) -> str | None:
    """Baseline and candidate side by side on each headline metric (report.json's
    metrics.per_role: each engine against the trainer). None: fewer than two roles or no
    metric measured for both."""
    roles = [r for r in ("baseline", "candidate") if r in (per_role or {})]
    if len(roles) < 2:
        return None
    names = [
        (k, label)
        for k, label in RL_METRICS
        if all(_num(per_role[r].get(k)) is not None for r in roles)
    ]
    if not names:
        return None
    fig, axes = figure(1.6 * len(names) + 0.8, 2.6, ncols=len(names))
    drawn = []
    for ax, (k, label) in zip(axes[0], names):
        vals = [_num(per_role[r][k]) for r in roles]
        drawn.append(ax.bar(roles, vals, color=[colour(r) for r in roles]))
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        for i, v in enumerate(vals):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=7)
    mark(*drawn)
    return svg(fig, key)


def finding_intervals(findings: list[dict[str, Any]], key: str) -> str | None:
    """Every finding with a confidence interval (report.json's verdict.findings[].test): its
    estimate and interval in units of its margin/limit, with the limit(s) marked (non-inferiority
    and bounds: +1; equivalence: -1 and +1). For rl the estimate is candidate - baseline.
    None: no finding carries an interval."""
    rows = []
    for f in findings or []:
        t = f.get("test") or {}
        est, lo, hi, margin = (_num(t.get(k)) for k in ("estimate", "ci_low", "ci_high", "margin"))
        if None in (est, lo, hi) or not margin:
            continue
        rows.append(
            (
                f["name"],
                t.get("kind"),
                est / margin,
                lo / margin,
                hi / margin,
                f.get("outcome"),
                margin,
            )
        )
    if not rows:
        return None
    fig, axes = figure(6.4, 0.9 + 0.42 * len(rows))
    ax = axes[0][0]
    drawn = []
    for i, (name, kind, est, lo, hi, outcome, margin) in enumerate(rows):
        c = {"pass": "#2ca02c", "fail": "#d62728"}.get(outcome, "#7f7f7f")
        drawn.append(
            ax.errorbar(
                [est], [i], xerr=[[est - lo], [hi - est]], fmt="o", color=c, capsize=3, markersize=4
            )
        )
        ax.annotate(
            f"{outcome}",
            (max(hi, est), i),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
            color=c,
        )
    mark(*[d.lines[0] for d in drawn], *[c for d in drawn for c in d.lines[2]])
    ax.axvline(1, color="#d62728", linestyle="--", linewidth=1)
    if any(k == "equivalence" for _, k, *_ in rows):
        ax.axvline(-1, color="#d62728", linestyle="--", linewidth=1)
    ax.axvline(0, color="#999999", linewidth=0.8)
    ax.margins(x=0.12)  # room for the outcome labels right of each interval
    ax.set_yticks(
        range(len(rows)), [f"{n} ({k}, limit {m:.3g})" for n, k, *_, m in rows], fontsize=7
    )
    ax.invert_yaxis()
    ax.set_xlabel("estimate and 90% interval / limit (dashed: the limit)")
    return svg(fig, key)


def lm_head_evidence(metrics: dict[str, Any], key: str) -> str | None:
    """The lm_head category's evidence (report.json metrics): the share of positions whose top
    logprob gaps sit on the 16-bit grid, and the mean |dlogp| to the trainer scored with an fp32
    head and with the model-dtype head (the model - fp32 gap's interval in the title). None:
    neither is present."""
    lat = (metrics or {}).get("lattice") or {}
    vs = (metrics or {}).get("vs_ref") or {}
    frac = _num(lat.get("fraction"))
    heads = [(h, _num((vs.get(h) or {}).get("abs_dlogp_mean"))) for h in ("float32", "model")]
    heads = [(h, v) for h, v in heads if v is not None]
    if frac is None and not heads:
        return None
    panels = (frac is not None) + bool(heads)
    fig, axes = figure(3.4 * panels, 2.8, ncols=panels)
    drawn, i = [], 0
    if frac is not None:
        ax = axes[0][i]
        i += 1
        drawn.append(
            ax.bar(["on grid", "off grid"], [frac, 1 - frac], color=["#d62728", "#1f77b4"])
        )
        ax.set_ylim(0, 1.05)
        ax.set_title(
            f"positions on the bf16 grid: {lat.get('n_on_grid')}/{lat.get('n_positions')}",
            fontsize=9,
        )
    if heads:
        ax = axes[0][i]
        labels = {
            "float32": "fp32 head",
            "model": f"{metrics.get('config_head_dtype') or 'model'} head",
        }
        drawn.append(
            ax.bar(
                [labels[h] for h, _ in heads],
                [v for _, v in heads],
                color=["#2ca02c", "#9467bd"][: len(heads)],
            )
        )
        gap = metrics.get("gap_model_minus_fp32") or {}
        title = "mean |dlogp| to the trainer"
        if _num(gap.get("ci_low")) is not None:
            title += (
                f"\nmodel - fp32: {gap['mean']:.3g} [{gap['ci_low']:.3g}, {gap['ci_high']:.3g}]"
            )
        ax.set_title(title, fontsize=9)
    mark(*drawn)
    return svg(fig, key)


def update_evidence(metrics: dict[str, Any], key: str) -> str | None:
    """The weight_update category's evidence (report.json metrics): every abs_dlogp_<when>_vs_
    <weights> it measured (before/after the update against the old/new weights; in flight:
    pre/post against old, keep, recompute); and, where the attribution ran, each hypothesis's
    distance. None: none measured."""
    m = metrics or {}
    bars = [
        (f"{g.group(1)} vs {g.group(2)}".replace("_", " "), _num(v))
        for k, v in m.items()
        if (g := re.fullmatch(r"abs_dlogp_(\w+?)_vs_(\w+)", k))
    ]
    bars = [(label, v) for label, v in bars if v is not None]
    closest = {k: _num(v) for k, v in ((m.get("attribution") or {}).get("closest") or {}).items()}
    closest = {k: v for k, v in closest.items() if v is not None}
    if not bars and not closest:
        return None
    panels = bool(bars) + bool(closest)
    fig, axes = figure(3.8 * panels, 2.8, ncols=panels)
    drawn, i = [], 0
    floor = 1e-9
    for title, items in (
        ("mean |dlogp| (log axis)", bars),
        ("attribution: |dlogp| to each hypothesis", list(closest.items())),
    ):
        if not items:
            continue
        ax = axes[0][i]
        i += 1
        drawn.append(
            ax.barh([k for k, _ in items], [max(v, floor) for _, v in items], color="#1f77b4")
        )
        log_scale(ax, "x")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(title, fontsize=9)
    mark(*drawn)
    return svg(fig, key)


def _num(v: Any) -> float | None:
    """A finite number, or None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None
