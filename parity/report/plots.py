"""The plots of report.html: pure functions from a run's per-token table (tokens.parquet as a
pandas DataFrame) or report.json's data to SVG text, or None when the data for a plot is absent.
matplotlib is imported inside the functions (the CLI starts without it)."""

from __future__ import annotations

import io
import math
import re
from typing import Any

import numpy as np

from parity.verdicts.metrics import ClipRange, kl_k3

# One colour per engine role, the same in every plot of a page.
ROLE_COLOURS = {"candidate": "#1f77b4", "baseline": "#ff7f0e"}
OTHER_COLOUR = "#2ca02c"
# The data artists of every plot carry an id starting with this; report.html's check script and
# the tests count them to prove that a drawn plot shows data.
DATA_ID = "pdata"


def colour(role: str) -> str:
    return ROLE_COLOURS.get(role, OTHER_COLOUR)


def _figure(width: float = 6.4, height: float = 3.6, ncols: int = 1, nrows: int = 1):
    """A figure with its axes, built without pyplot (no global state, no GUI backend)."""
    from matplotlib.figure import Figure  # lazy: matplotlib, only when report.html is drawn

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _mark(*artists) -> None:
    """Tag a figure's data artists (lines, collections, bar containers: each bar) so their SVG
    groups get ids starting with DATA_ID."""
    flat = []
    for a in artists:
        flat.extend(a if isinstance(a, (list, tuple)) else [a])
    for i, a in enumerate(flat):
        a.set_gid(f"{DATA_ID}-{i}")


def _svg(fig, key: str) -> str:
    """The figure as SVG text for inlining in HTML: deterministic (svg.hashsalt is the plot's
    key, no date), ids unique per key, no XML prolog or metadata, width/height left to CSS."""
    import matplotlib  # lazy: matplotlib, only when report.html is drawn

    params = {"svg.hashsalt": f"parity-{key}", "svg.fonttype": "none", "font.size": 9}
    with matplotlib.rc_context(params):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    # matplotlib's data-artist ids are gids we set: make them unique on the page too.
    text = text.replace(f'id="{DATA_ID}-', f'id="{DATA_ID}-{key}-')
    # CSS scales the plot to its column, never above its natural width (small text otherwise
    # grows with a wide column).
    return re.sub(
        r'<svg([^>]*?) width="([^"]*)" height="[^"]*"',
        r'<svg\1 style="max-width:\2"',
        text,
        count=1,
    )


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
    ratio PPO clips: exp(r) outside [1 - eps_low, 1 + eps_high] is clipped, parity.verdicts.metrics),
    with the clip bounds log(1 - eps_low) and log(1 + eps_high) marked. None: no scored token."""
    _, r = _finite_ratio(tokens)
    if r.size == 0:
        return None
    lo, hi = clip.log_low, clip.log_high
    span = max(float(np.max(np.abs(r))), hi, abs(lo) if math.isfinite(lo) else hi) * 1.1
    fig, axes = _figure(6.4, 3.0)
    ax = axes[0][0]
    bars = ax.hist(r, bins=60, range=(-span, span), color=colour(role), alpha=0.85)[2]
    _mark(bars)
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
    if max(b.get_height() for b in bars) > 100:  # a sharp peak would hide the tails
        ax.set_yscale("log")
    ax.set_xlabel("r = trainer logprob - engine logprob (log importance ratio)")
    ax.set_ylabel("tokens")
    ax.set_title(f"{role}: {r.size} tokens, {clipped} outside the clip range", fontsize=9, pad=22)
    return _svg(fig, key)


def abs_dlogp_by_position(tokens, key: str, max_points: int = 1500) -> str | None:
    """|dlogp| = |trainer - engine| of every scored token (at most max_points per role, evenly
    spaced) against its position in the completion, one colour per role, with each role's
    median per position. None: no scored token."""
    rows, r = _finite_ratio(tokens)
    if r.size == 0:
        return None
    fig, axes = _figure(6.4, 3.2)
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
    _mark(*drawn)
    ax.set_yscale("log")
    ax.set_xlabel("token position in the completion")
    ax.set_ylabel("|dlogp| (floor 1e-9)")
    ax.legend(fontsize=7, loc="best")
    return _svg(fig, key)


def position_curves(tokens, clip: ClipRange, key: str, buckets: int = 8) -> str | None:
    """Clip rate, mean k3 KL and mean reference entropy per position bucket, one line per role
    (same definitions as parity.verdicts.metrics: r = trainer - engine, masked tokens left out).
    None: no scored token."""
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
    fig, axes = _figure(9.0, 2.8, ncols=3)
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
    _mark(*drawn)
    axes[0][0].legend(fontsize=7)
    return _svg(fig, key)


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
    fig, axes = _figure(6.4, min(1.5 + 0.12 * len(index), 6.0))
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
    _mark(*drawn)
    ax.set_xlabel("token position in the completion")
    ax.set_ylabel("sequence (by role)")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(
        f"tokens by weight version ({len(rows)} tokens, {len(index)} sequences)", fontsize=9
    )
    return _svg(fig, key)


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
    fig, axes = _figure(1.6 * len(names) + 0.8, 2.6, ncols=len(names))
    drawn = []
    for ax, (k, label) in zip(axes[0], names):
        vals = [_num(per_role[r][k]) for r in roles]
        drawn.append(ax.bar(roles, vals, color=[colour(r) for r in roles]))
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        for i, v in enumerate(vals):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=7)
    _mark(*drawn)
    return _svg(fig, key)


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
    fig, axes = _figure(6.4, 0.9 + 0.42 * len(rows))
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
    _mark(*[d.lines[0] for d in drawn], *[c for d in drawn for c in d.lines[2]])
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
    return _svg(fig, key)


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
    fig, axes = _figure(3.4 * panels, 2.8, ncols=panels)
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
    _mark(*drawn)
    return _svg(fig, key)


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
    fig, axes = _figure(3.8 * panels, 2.8, ncols=panels)
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
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(title, fontsize=9)
    _mark(*drawn)
    return _svg(fig, key)


def _num(v: Any) -> float | None:
    """A finite number, or None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None
