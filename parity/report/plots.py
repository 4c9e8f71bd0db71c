"""What every plot of report.html shares: a matplotlib figure built without pyplot, its data
artists tagged (DATA_ID) and the figure as deterministic inline SVG text, and one colour per
engine role. matplotlib is imported inside the functions (the CLI starts without it)."""

from __future__ import annotations

import io
import re

# One colour per engine role, the same in every plot of a page.
ROLE_COLOURS = {"candidate": "#1f77b4", "baseline": "#ff7f0e"}
OTHER_COLOUR = "#2ca02c"
# The data artists of every plot carry an id starting with this; report.html's check script and
# the tests count them to prove that a drawn plot shows data.
DATA_ID = "pdata"


def colour(role: str) -> str:
    return ROLE_COLOURS.get(role, OTHER_COLOUR)


def figure(
    width: float = 6.4,
    height: float = 3.6,
    ncols: int = 1,
    nrows: int = 1,
    margins: tuple[float, float, float, float, float] | None = None,
):
    """A figure with its axes, built without pyplot (no global state, no GUI backend).

    margins: (left, bottom, right, top, gap between columns), in inches, for a plot whose
    labels are numbers of known width; None lets matplotlib's constrained layout fit the labels
    (it measures every tick label: half of drawing the figure).
    """
    from matplotlib.figure import Figure  # lazy: matplotlib, only when report.html is drawn

    fig = Figure(figsize=(width, height), layout=None if margins else "constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    if margins:
        left, bottom, right, top, gap = margins
        column = (width - left - right - gap * (ncols - 1)) / ncols
        fig.subplots_adjust(
            left=left / width,
            bottom=bottom / height,
            right=1 - right / width,
            top=1 - top / height,
            wspace=gap / column,
        )
    return fig, axes


def log_scale(ax, axis: str = "y") -> None:
    """A log axis with plain-text tick labels ("1e-06", "100"): matplotlib's default labels
    are mathtext, whose parsing was a fifth of report.html's drawing time."""
    from matplotlib.ticker import LogFormatter  # lazy: matplotlib, only when report.html is drawn

    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(LogFormatter())
    target.set_minor_formatter(LogFormatter())


def mark(*artists) -> None:
    """Tag a figure's data artists (lines, collections, bar containers: each bar) so their SVG
    groups get ids starting with DATA_ID."""
    flat = []
    for a in artists:
        flat.extend(a if isinstance(a, (list, tuple)) else [a])
    for i, a in enumerate(flat):
        a.set_gid(f"{DATA_ID}-{i}")


def svg(fig, key: str) -> str:
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
