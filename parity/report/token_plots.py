"""The plots of report.html drawn from a run's per-token table (tokens.parquet's rows as a
pandas DataFrame): pure functions to SVG text, or None when the data for a plot is absent."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from parity.report.plots import colour, figure, log_scale, mark, svg
from parity.verdicts.formulas import ClipRange, kl_k3


def _finite_ratio(tokens) -> tuple[Any, np.ndarray]:
    """(rows scored by the reference with finite logprobs on both sides, r = trainer - engine
    of those rows)."""
    ok = np.isfinite(tokens["trainer_logprob"].to_numpy(float)) & np.isfinite(
        tokens["engine_logprob"].to_numpy(float)
    )
    rows = tokens[ok]
    return rows, rows["trainer_logprob"].to_numpy(float) - rows["engine_logprob"].to_numpy(float)


def log_ratio_hist(tokens, clip: ClipRange, role: str, key: str) -> str | None:
    """Histogram of one role's per-token log-ratio r = trainer_logprob - engine_logprob (the
    ratio PPO clips: exp(r) outside [1 - eps_low, 1 + eps_high] is clipped,
    parity.verdicts.formulas), with the clip bounds log(1 - eps_low) and log(1 + eps_high) marked.
    None: no scored token."""
    _, r = _finite_ratio(tokens)
    if r.size == 0:
        return None
    lo, hi = clip.log_low, clip.log_high
    span = max(float(np.max(np.abs(r))), hi, abs(lo) if math.isfinite(lo) else hi) * 1.1
    fig, axes = figure(6.4, 3.0, margins=(0.7, 0.5, 0.15, 0.75, 0))
    ax = axes[0][0]
    counts, edges = np.histogram(r, bins=60, range=(-span, span))
    # One filled outline, not 60 bars: a fifth of the SVG and of the drawing time.
    mark(ax.stairs(counts, edges, fill=True, color=colour(role), alpha=0.85))
    for bound, name in ((lo, "1 - eps_low"), (hi, "1 + eps_high")):
        if math.isfinite(bound):
            ax.axvline(bound, color="#d62728", linestyle="--", linewidth=1)
            ax.annotate(
                f"log({name})\n= {bound:.3g}",
                (bound, 1),
                xycoords=("data", "axes fraction"),
                ha="center",
                va="bottom",
                fontsize=7,
                color="#d62728",
            )
    clipped = int(np.sum((r < lo) | (r > hi)))
    if counts.max() > 100:  # a sharp peak would hide the tails
        log_scale(ax)
    ax.set_xlabel("r = trainer logprob - engine logprob (log importance ratio)")
    ax.set_ylabel("tokens")
    ax.set_title(f"{role}: {r.size} tokens, {clipped} outside the clip range", fontsize=9, pad=22)
    return svg(fig, key)


def abs_dlogp_by_position(tokens, key: str, max_points: int = 1500) -> str | None:
    """|dlogp| = |trainer - engine| of every scored token (at most max_points per role, evenly
    spaced) against its position in the completion, one colour per role, with each role's
    median per position. None: no scored token."""
    rows, r = _finite_ratio(tokens)
    if r.size == 0:
        return None
    fig, axes = figure(6.4, 3.2, margins=(0.9, 0.5, 0.15, 0.15, 0))
    ax = axes[0][0]
    floor = 1e-9  # an exact match (|dlogp| = 0) still shows, at the bottom of the log axis
    drawn = []
    for role in sorted(rows["engine"].unique()):
        sel = (rows["engine"] == role).to_numpy()
        pos, v = rows["position"].to_numpy()[sel], np.maximum(np.abs(r[sel]), floor)
        # Every point is an SVG element: past max_points, an evenly spaced subset (the medians
        # still use every token).
        shown = np.linspace(0, pos.size - 1, min(pos.size, max_points)).astype(int)
        label = f"{role} tokens" + (
            f" ({shown.size} of {pos.size})" if shown.size < pos.size else ""
        )
        drawn.append(
            ax.scatter(
                pos[shown], v[shown], s=6, alpha=0.35, color=colour(role), linewidths=0, label=label
            )
        )
        ps = np.unique(pos)
        med = [float(np.median(v[pos == p])) for p in ps]
        drawn.append(ax.plot(ps, med, color=colour(role), linewidth=1.5, label=f"{role} median")[0])
    mark(*drawn)
    log_scale(ax)
    ax.set_xlabel("token position in the completion")
    ax.set_ylabel("|dlogp| (floor 1e-9)")
    ax.legend(fontsize=7, loc="best")
    return svg(fig, key)


def position_curves(tokens, clip: ClipRange, key: str, buckets: int = 8) -> str | None:
    """Clip rate, mean k3 KL and mean reference entropy per position bucket, one line per role
    (same definitions as parity.verdicts.formulas and metrics: r = trainer - engine, masked
    tokens left out). None: no scored token."""
    rows, r = _finite_ratio(tokens)
    if r.size == 0:
        return None
    pos = rows["position"].to_numpy()
    n = int(min(buckets, pos.max() + 1))
    edges = np.linspace(pos.min(), pos.max() + 1, n + 1)
    which = np.clip(np.searchsorted(edges, pos, side="right") - 1, 0, n - 1)
    centres = (edges[:-1] + edges[1:] - 1) / 2
    values = {
        "clip rate (tokens)": ((r < clip.log_low) | (r > clip.log_high)).astype(float),
        "k3 KL (mean)": kl_k3(
            rows["trainer_logprob"].to_numpy(float), rows["engine_logprob"].to_numpy(float)
        ),
        "reference entropy (mean, nats)": rows["entropy"].to_numpy(float),
    }
    fig, axes = figure(9.0, 2.8, ncols=3, margins=(0.55, 0.5, 0.15, 0.3, 0.55))
    drawn = []
    for ax, (name, v) in zip(axes[0], values.items()):
        for role in sorted(rows["engine"].unique()):
            sel = (rows["engine"] == role).to_numpy()
            ys = [
                float(np.nanmean(v[sel & (which == b)]))
                if np.any(np.isfinite(v[sel & (which == b)]))
                else np.nan
                for b in range(n)
            ]
            if np.any(np.isfinite(ys)):
                drawn.append(
                    ax.plot(centres, ys, marker="o", markersize=3, color=colour(role), label=role)[
                        0
                    ]
                )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("position bucket (centre)")
    if not drawn:
        return None
    mark(*drawn)
    axes[0][0].legend(fontsize=7)
    return svg(fig, key)


def weight_versions(tokens, key: str) -> str | None:
    """Timeline of the weight version that produced each token: one row per sequence of each
    role, x = position, colour = weight version. None: no token carries a version."""
    rows = tokens[tokens["weight_version"].notna()]
    if len(rows) == 0:
        return None
    from matplotlib import colormaps  # lazy: matplotlib, only when report.html is drawn

    versions = sorted(int(v) for v in rows["weight_version"].unique())
    cmap = colormaps["viridis"].resampled(max(len(versions), 2))
    seqs = rows[["engine", "sequence_id"]].drop_duplicates().sort_values(["engine", "sequence_id"])
    index = {(e, s): i for i, (e, s) in enumerate(seqs.itertuples(index=False))}
    y = np.array([index[(e, s)] for e, s in zip(rows["engine"], rows["sequence_id"])])
    fig, axes = figure(6.4, min(1.5 + 0.12 * len(index), 6.0))
    ax = axes[0][0]
    drawn = []
    for i, ver in enumerate(versions):
        sel = (rows["weight_version"] == ver).to_numpy()
        drawn.append(
            ax.scatter(
                rows["position"].to_numpy()[sel],
                y[sel],
                s=10,
                marker="s",
                color=cmap(i),
                linewidths=0,
                label=f"version {ver}",
            )
        )
    mark(*drawn)
    ax.set_xlabel("token position in the completion")
    ax.set_ylabel("sequence (by role)")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(
        f"tokens by weight version ({len(rows)} tokens, {len(index)} sequences)", fontsize=9
    )
    return svg(fig, key)
