"""The figures of a report.html scenario card: each plot its data allows (per-token plots from
tokens.parquet's rows, evidence plots from report.json's metrics and findings), with its title
and caption; a plot that fails to draw leaves a note, never a broken page."""

from __future__ import annotations

import re
from html import escape
from typing import Any, Callable

from parity.report import metric_plots, token_plots
from parity.run.faults import describe
from parity.verdicts.formulas import ClipRange


def _clip(rec: dict[str, Any]) -> tuple[ClipRange, str]:
    """The scenario's PPO clip range and where it came from."""
    c = rec.get("clip") or {}
    try:
        return ClipRange(float(c["eps_low"]), float(c["eps_high"])), "the scenario's clip"
    except (KeyError, TypeError, ValueError):
        d = ClipRange()
        return (
            d,
            f"clip not in report.json: parity's default eps_low={d.eps_low}, eps_high={d.eps_high}",
        )


def _plot(
    figs: list[str], key: str, title: str, caption: str, fn: Callable, *args, wide: bool = False
) -> None:
    """Append one figure (nothing when its data is absent; a note when drawing it failed);
    a wide one spans the card."""
    key = re.sub(r"[^A-Za-z0-9_-]", "_", key)  # it names SVG ids: a role name is data
    try:
        svg = fn(*args, key)
    except Exception as exc:  # a plot must not cost the page
        figs.append(
            f'<p class="mute">plot "{escape(title)}" not drawn: {escape(describe(exc))}</p>'
        )
        return
    if svg is None:
        return
    figs.append(
        f'<figure class="plot{" wide" if wide else ""}" id="plot-{escape(key)}">'
        f'<div class="svg">{svg}</div>'
        f"<figcaption><b>{escape(title)}</b>. {escape(caption)}</figcaption></figure>"
    )


def scenario_plots(rec: dict[str, Any], tokens, index: int) -> list[str]:
    """The figures of one scenario card, each only where its data exists."""
    figs: list[str] = []
    m = rec.get("metrics") or {}
    clip, clip_from = _clip(rec)
    k = f"s{index}"
    rows = None
    if tokens is not None and len(tokens) and "scenario" in tokens:
        rows = tokens[tokens["scenario"] == rec["name"]]
    if rows is not None and len(rows):
        for role in sorted(rows["engine"].unique()):
            _plot(
                figs,
                f"{k}-hist-{role}",
                f"log-ratio, {role}",
                f"Per-token r = trainer - engine logprob (the log importance ratio PPO clips), "
                f"from tokens.parquet; dashed: clip bounds log(1 - {clip.eps_low}) and "
                f"log(1 + {clip.eps_high}) ({clip_from}).",
                token_plots.log_ratio_hist,
                rows[rows["engine"] == role],
                clip,
                role,
            )
        _plot(
            figs,
            f"{k}-pos",
            "|dlogp| by position",
            "Every scored token's |trainer - engine| logprob against its position, and the "
            "median per position.",
            token_plots.abs_dlogp_by_position,
            rows,
        )
        _plot(
            figs,
            f"{k}-curves",
            "curves by position",
            f"Token clip rate ({clip_from}), mean k3 KL and the reference's mean entropy per "
            "position bucket.",
            token_plots.position_curves,
            rows,
            clip,
            wide=True,
        )
        versions = rows["weight_version"].dropna().unique() if "weight_version" in rows else []
        if len(versions) > 1 or (len(versions) and "version_after_update" in m):
            _plot(
                figs,
                f"{k}-versions",
                "tokens by weight version",
                "Which weight version produced each token (tokens.parquet weight_version).",
                token_plots.weight_versions,
                rows,
            )
    _plot(
        figs,
        f"{k}-roles",
        "baseline vs candidate",
        "Each engine against the trainer reference (report.json metrics.per_role).",
        metric_plots.rl_side_by_side,
        m.get("per_role"),
        wide=True,
    )
    _plot(
        figs,
        f"{k}-intervals",
        "findings with intervals",
        "Each finding's estimate and confidence interval divided by its limit (for a "
        "baseline comparison: candidate - baseline). It passes when the interval lies inside "
        "the dashed limit(s), fails when it lies beyond.",
        metric_plots.finding_intervals,
        (rec.get("verdict") or {}).get("findings"),
    )
    _plot(
        figs,
        f"{k}-lmhead",
        "lm_head evidence",
        "Share of positions whose top-logprob gaps sit on the 16-bit grid, and the distance "
        "to the trainer scored with each head (report.json metrics).",
        metric_plots.lm_head_evidence,
        m,
    )
    _plot(
        figs,
        f"{k}-update",
        "weight update evidence",
        "Mean |dlogp| before and after the update against the old and new weights; the "
        "attribution's hypotheses (report.json metrics).",
        metric_plots.update_evidence,
        m,
    )
    return figs
