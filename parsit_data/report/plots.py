"""Plots for the HTML report: matplotlib figures, returned as SVG bytes to inline.

SVG rather than PNG: vector (sharp at any zoom) and about half the drawing time, since nothing is
rasterized; the layout is a tight bounding box computed once at save time instead of a constrained
layout solved on every draw. ``svg.hashsalt`` is fixed so the same report gives the same bytes.

Every plot is drawn from the report model alone (fixed-bin histograms, tables), so ``parsit-data
report DIR`` can redraw them without touching the shards.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: works on a headless build machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from parsit_data.report.model import Distribution, MixtureRow, ReasonRow, SizeBin  # noqa: E402
from parsit_data.stats import int_bin, int_bin_range, share_bin  # noqa: E402

COLORS = ["#3b6ea8", "#e08a2c", "#4c9a5b", "#b8423c", "#7e5aa6", "#8c6d31", "#d46aa8", "#6b6b6b"]
_MAX_BARS = 80
_DISPLAY_BINS = 60


def _svg(fig) -> bytes:
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "parsit", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.05, metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue()


def _fig(width: float = 6.2, height: float = 2.7):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def _slots(overall: Distribution) -> list[tuple[float, float]]:
    """Display slots ``(lo, hi)``: the fixed bins themselves when few, else an even grid of them."""
    q = overall.quantiles
    if overall.scheme == "share":
        return [(i / 100, (i + 1) / 100) for i in range(share_bin(q.min), share_bin(q.max) + 1)]
    first, last = int_bin(q.min), int_bin(q.max)
    if last - first + 1 <= _MAX_BARS:  # every fixed bin, empty ones included (exact below 128)
        return [(lo, hi + 1) for lo, hi in (int_bin_range(i) for i in range(first, last + 1))]
    edges = np.linspace(q.min, q.max + 1, _DISPLAY_BINS + 1)
    return list(zip(edges[:-1], edges[1:]))


def histogram(per_source: dict[str, Distribution], overall: Distribution, max_length: int | None = None,
              scale: float = 1.0, label: str | None = None) -> bytes:
    """Stacked per-source bars over the fixed bins (or a coarser even grid when there are many), with
    the p50/p90/p99 of all sources marked. ``scale`` and ``label`` show the x axis in another unit (a clip's
    duration binned in ms, shown in s); the bins stay the stored ones."""
    slots = _slots(overall)
    starts = np.array([lo for lo, _ in slots])
    widths = np.array([hi - lo for lo, hi in slots])
    integer = overall.scheme == "int"  # an int bin [lo, hi] is drawn from lo - 0.5 to hi + 0.5
    fig, ax = _fig()
    edges = np.append(starts, starts[-1] + widths[-1]) - (0.5 if integer else 0)
    bottom = np.zeros(len(slots))
    for i, (name, d) in enumerate(per_source.items()):
        counts = np.zeros(len(slots))
        for b in d.bins:  # a fixed bin lands in the slot holding its middle
            k = int(np.searchsorted(starts, (b.lo + b.hi) / 2, side="right")) - 1
            counts[min(max(k, 0), len(slots) - 1)] += b.count
        if counts.any():  # one artist per source (stairs): fast however many bins
            ax.stairs(bottom + counts, edges, baseline=bottom.copy(), fill=True, label=name,
                      color=COLORS[i % len(COLORS)], linewidth=0)
            bottom += counts
    ax.set_ylim(0, bottom.max() * 1.05)
    if integer:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if scale != 1.0:
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v * scale:,.6g}"))
    q = overall.quantiles
    if q.max != q.min:
        fmt = ((lambda v: f"{v:.0%}") if overall.scheme == "share" else
               (lambda v: f"{v:,.0f}") if scale == 1.0 else (lambda v: f"{v * scale:,.4g}"))
        for name, v, style in (("p50", q.p50, ":"), ("p90", q.p90, "--"), ("p99", q.p99, "-.")):
            ax.axvline(v, color="#222", linestyle=style, linewidth=1.1, label=f"{name} {fmt(v)}")
    if max_length is not None:
        ax.axvline(max_length, color="#c0392b", linewidth=1.6, label=f"--max-length {max_length:,}")
    ax.set_xlabel(label or overall.label, fontsize=9)
    ax.set_ylabel({"image": "images", "video": "videos"}.get(overall.unit, "samples"), fontsize=9)
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    if overall.scheme == "share":
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)


def image_sizes(bins: list[SizeBin], title: str = "original image sizes (dashed: square)") -> bytes:
    """Width x height of every image (2-D fixed bins; marker area grows with the count)."""
    fig, ax = _fig(5.2, 3.4)
    w = np.array([(b.width_lo + b.width_hi) / 2 for b in bins])
    h = np.array([(b.height_lo + b.height_hi) / 2 for b in bins])
    c = np.array([b.count for b in bins], dtype=float)
    ax.scatter(w, h, s=20 + 180 * np.sqrt(c / c.max()), alpha=0.6, color=COLORS[0], edgecolor="white")
    top = max(w.max(), h.max()) * 1.1
    ax.plot([0, top], [0, top], color="#aaa", linewidth=0.8, linestyle="--")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("width (px)", fontsize=9)
    ax.set_ylabel("height (px)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.set_title(title, fontsize=9)
    return _svg(fig)


def mixture(rows: list[MixtureRow]) -> bytes:
    """Requested share of samples against achieved shares of samples, tokens and supervised tokens."""
    fig, ax = _fig(6.2, 0.6 + 0.55 * len(rows) * 1.6)
    y = np.arange(len(rows))
    series = [("requested (records selected)", [r.requested_share for r in rows], "#bbbbbb"),
              ("kept samples", [r.achieved_samples_share for r in rows], COLORS[0]),
              ("tokens", [r.achieved_tokens_share for r in rows], COLORS[1]),
              ("supervised tokens", [r.achieved_supervised_share for r in rows], COLORS[2])]
    hgt = 0.8 / len(series)
    for k, (label, vals, color) in enumerate(series):
        ax.barh(y + k * hgt - 0.4 + hgt / 2, vals, height=hgt, label=label, color=color)
    ax.set_yticks(y, [r.source for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.grid(axis="x", color="#e5e5e5")
    ax.grid(axis="y", visible=False)
    return _svg(fig)


def reasons(rows: list[ReasonRow], xlabel: str = "quarantined records") -> bytes:
    fig, ax = _fig(6.2, 0.5 + 0.28 * len(rows))
    y = np.arange(len(rows))
    ax.barh(y, [r.count for r in rows], color=COLORS[3])
    ax.set_yticks(y, [r.reason for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.tick_params(labelsize=8)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(axis="x", color="#e5e5e5")
    ax.grid(axis="y", visible=False)
    return _svg(fig)
