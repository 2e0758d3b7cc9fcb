"""Figure helpers: arrays in, a matplotlib figure out; :func:`save_figure` writes ``figures/NAME.png``.

Nothing here computes a result; the notebooks compute and these only draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from sae_ortho.core.atomic import replacing
from sae_ortho.core.paths import FIGURES, OUTPUT_ROOT
from sae_ortho.core.validation import check_bool

sns.set_theme(style="whitegrid", context="notebook")


def save_figure(fig: plt.Figure, name: str, folder: Path | None = None) -> Path:
    """Save ``fig`` as ``<folder>/<name>.png`` (default: :data:`sae_ortho.core.paths.FIGURES`).

    PNG without a software/date stamp, so the same figure gives the same bytes. Returns the path,
    relative to the output root when it lies inside it (so notebooks show no machine-specific path).
    """
    if not name or any(c in name for c in "/\\ "):
        raise ValueError(f"figure name must be a plain file stem without spaces, got {name!r}")
    folder = FIGURES if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    with replacing(path, suffix=".png") as tmp:  # savefig picks the format from the suffix
        fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Software": None})
    try:
        return path.relative_to(OUTPUT_ROOT)
    except ValueError:
        return path


def heatmaps(
    values: Sequence[np.ndarray],
    titles: Sequence[str],
    row_labels: Sequence,
    col_labels: Sequence,
    xlabel: str,
    ylabel: str,
    suptitle: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
    fmt: str = ".2f",
    cmap: str = "viridis",
    ncols: int | None = None,
) -> plt.Figure:
    """One annotated heatmap per array in ``values`` (each [len(row_labels), len(col_labels)]),
    ``ncols`` per row (default: all in one row)."""
    ncols = ncols or len(values)
    nrows = -(-len(values) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.8, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(values):]:
        ax.set_visible(False)
    for ax, v, t in zip(axes.flat, values, titles):
        sns.heatmap(
            np.asarray(v), annot=True, fmt=fmt, vmin=vmin, vmax=vmax, cmap=cmap, cbar=False, ax=ax,
            xticklabels=[str(c) for c in col_labels], yticklabels=[str(r) for r in row_labels],
        )
        ax.set(title=t, xlabel=xlabel, ylabel=ylabel)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def directions_2d(
    panels: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    reference: Sequence[np.ndarray],
    true: Sequence[np.ndarray],
    suptitle: str = "",
) -> plt.Figure:
    """Decoder directions in 2-D. panels[i]: a list of [n, 2] decoders (drawn faintly, overlaid);
    reference[i]: [n, 2] optimum decoder (dashed); true[i]: [f, 2] true feature directions (black)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, decs, ref, tru, t in zip(axes[0], panels, reference, true, titles):
        for dec in decs:
            for r in np.asarray(dec):
                ax.plot([0, r[0]], [0, r[1]], color="tab:blue", alpha=0.25, lw=1.5)
        for r in np.asarray(ref):
            ax.plot([0, r[0]], [0, r[1]], color="tab:red", ls="--", lw=2)
        for r in np.asarray(tru):
            r = r / np.linalg.norm(r)
            ax.plot([0, r[0]], [0, r[1]], color="black", lw=1, marker="o", ms=3)
        ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), aspect="equal", title=t, xticks=[], yticks=[])
    handles = [
        plt.Line2D([], [], color="tab:blue", alpha=0.5, label="trained decoder rows"),
        plt.Line2D([], [], color="tab:red", ls="--", label="optimum decoder"),
        plt.Line2D([], [], color="black", marker="o", label="true features"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.06))
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def lines_with_spread(
    x: Sequence,
    series: dict[str, np.ndarray],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    ax: plt.Axes | None = None,
) -> plt.Figure:
    """Mean and +-1 std over seeds. series: label -> [n_seeds, len(x)]."""
    logx = check_bool("logx", logx)
    logy = check_bool("logy", logy)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for label, ys in series.items():
        ys = np.asarray(ys, dtype=float)
        if len(ys) == 0:  # no seeds measured here: an empty line (and its legend entry), no warning
            mean = std = np.full(len(x), np.nan)
        else:
            mean, std = ys.mean(0), ys.std(0)
        ax.plot(x, mean, marker="o", label=label)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize="small")
    return ax.figure if fig is None else fig


def grid_of_lines(
    x: Sequence,
    panels: dict[str, dict[str, np.ndarray]],
    xlabel: str,
    ylabel: str,
    suptitle: str = "",
    logx: bool = False,
    logy: bool = False,
    ncols: int | None = None,
) -> plt.Figure:
    """Several :func:`lines_with_spread` panels, ``ncols`` per row (default: all in one row).
    panels: title -> series."""
    logx = check_bool("logx", logx)
    logy = check_bool("logy", logy)
    ncols = ncols or len(panels)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows), squeeze=False, sharey=True)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, series) in zip(axes.flat, panels.items()):
        lines_with_spread(x, series, xlabel, ylabel, title=title, logx=logx, logy=logy, ax=ax)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def status_by_frequency(
    bin_labels: Sequence[str],
    fractions: dict[str, dict[str, np.ndarray]],
    xlabel: str = "feature firing probability",
    suptitle: str = "",
) -> plt.Figure:
    """Stacked bars of per-feature status per frequency bin, one panel per condition.

    fractions: condition -> status -> [n_bins] mean fraction of features with that status.
    """
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.6 * len(fractions), 3.6), squeeze=False, sharey=True)
    colors = {"alone": "tab:green", "in combination": "tab:orange", "missed": "tab:red"}
    for ax, (cond, by_status) in zip(axes[0], fractions.items()):
        bottom = np.zeros(len(bin_labels))
        for status, frac in by_status.items():
            ax.bar(bin_labels, frac, bottom=bottom, label=status, color=colors.get(status))
            bottom += np.asarray(frac)
        ax.set(title=cond, xlabel=xlabel, ylim=(0, 1.02))
        ax.tick_params(axis="x", rotation=30)
    axes[0, 0].set_ylabel("fraction of features\n(alone: higher is better)")
    # one legend for all panels, outside them, so it hides no bar
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small", bbox_to_anchor=(0.5, -0.02))
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def scaling(series: dict[str, tuple[np.ndarray, ...]], title: str = "") -> plt.Figure:
    """Cost against dictionary size, one line per method.

    series: method -> (n, seconds per step, peak MB[, time over vanilla's]); the fourth array, where
    given, adds a panel of the overhead against the vanilla step timed in the same run.
    """
    ratio = all(len(v) > 3 for v in series.values())
    fig, axes = plt.subplots(1, 3 if ratio else 2, figsize=(15 if ratio else 10, 4.2))
    for method, (n, secs, mb, *rest) in series.items():
        axes[0].plot(n, secs, marker="o", label=method)
        axes[1].plot(n, mb, marker="o", label=method)
        if ratio:
            axes[2].plot(n, rest[0], marker="o", label=method)
    axes[0].set(xlabel="latents n", ylabel="seconds per training step (amortised)", xscale="log", yscale="log")
    axes[1].set(xlabel="latents n", ylabel="peak RSS (MB)", xscale="log", yscale="log")
    if ratio:
        axes[2].axhline(1.0, color="grey", lw=0.8)
        axes[2].set(xlabel="latents n", ylabel="step time / vanilla step (same run)", xscale="log", yscale="log")
    axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig


def histograms(
    panels: dict[str, dict[str, Sequence[np.ndarray]]],
    xlabel: str,
    bins: int = 50,
    value_range: tuple[float, float] = (0.0, 1.0),
    suptitle: str = "",
    logy: bool = False,
    references: Sequence[str] = (),
) -> plt.Figure:
    """Overlaid step histograms (one line per array, e.g. per seed), one panel per key.

    panels: panel title -> label -> list of 1-D arrays; every array of a label gets its colour.
    ``logy`` puts the density on a log scale (tails become visible). Labels in ``references``
    (e.g. a random dictionary, whose narrow spike would squash the other curves) are drawn as a
    grey band from their 5th to 95th percentile with a line at the median, not as a histogram.
    """
    logy = check_bool("logy", logy)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False, sharey=True)
    edges = np.linspace(*value_range, bins + 1)
    for ax, (title, series) in zip(axes[0], panels.items()):
        drawn = {k: v for k, v in series.items() if k not in references}
        for color, (label, arrays) in zip(sns.color_palette(n_colors=len(drawn)), drawn.items()):
            for j, values in enumerate(arrays):
                ax.hist(
                    values, bins=edges, histtype="step", color=color, alpha=0.9 if j == 0 else 0.5,
                    label=label if j == 0 else None, density=True,
                )
        for label in references:
            if label in series:
                values = np.concatenate([np.asarray(v, dtype=float) for v in series[label]])
                lo, mid, hi = np.percentile(values, [5, 50, 95])
                ax.axvspan(lo, hi, color="grey", alpha=0.25, lw=0, label=f"{label} (5-95%, median)")
                ax.axvline(mid, color="grey", lw=1)
        ax.set(title=title, xlabel=xlabel, ylabel="density")
        if logy:
            ax.set_yscale("log")
        ax.legend(fontsize="small")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def variant_bars(
    names: Sequence[str],
    panels: dict[str, tuple[np.ndarray, np.ndarray]],
    groups: Sequence[str] | None = None,
    suptitle: str = "",
) -> plt.Figure:
    """Horizontal bars with ±1 std error bars, one row per variant, one panel per metric.

    panels: metric label -> (means [n_variants], stds [n_variants]); ``groups`` colours the bars
    by design choice.
    """
    n = len(names)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 1.6, 0.28 * n + 1.4),
                             squeeze=False, sharey=True)
    palette = dict(zip(dict.fromkeys(groups or ["all"]), sns.color_palette(n_colors=len(set(groups or ["all"])))))
    colors = [palette[g] for g in (groups or ["all"] * n)]
    y = np.arange(n)
    for ax, (label, (mean, std)) in zip(axes[0], panels.items()):
        ax.barh(y, mean, xerr=std, color=colors, alpha=0.85, capsize=2)
        ax.set(xlabel=label)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(y, names)
    axes[0, 0].invert_yaxis()
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def curves_by_tokens(
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    highlight: str | None = None,
    references: dict[str, float] | None = None,
    suptitle: str = "",
) -> plt.Figure:
    """One panel per metric, one line per run family against training tokens.

    panels: metric -> label -> (tokens [k], values [n_seeds, k]); the mean is drawn with the seeds'
    range shaded. ``highlight`` draws that label thick and black; ``references`` adds a dashed
    horizontal line per metric (e.g. a random dictionary's value).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.8), squeeze=False)
    labels = list(dict.fromkeys(label for series in panels.values() for label in series))
    colors = dict(zip(labels, sns.color_palette("tab10", n_colors=len(labels))))
    for ax, (metric, series) in zip(axes[0], panels.items()):
        for label, (tokens, values) in series.items():
            values = np.atleast_2d(np.asarray(values, float))
            main = label == highlight
            ax.plot(tokens, values.mean(0), marker="o", ms=3, label=label, lw=2.6 if main else 1.2,
                    color="black" if main else colors[label], zorder=3 if main else 2)
            if values.shape[0] > 1:
                ax.fill_between(tokens, values.min(0), values.max(0), alpha=0.15,
                                color="black" if main else colors[label])
        if references and metric in references:
            ax.axhline(references[metric], ls="--", color="grey", lw=1, label="random dictionary")
        ax.set(xlabel="training tokens", title=metric)
        ax.set_xscale("log")
    handles, names = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize="small",
               bbox_to_anchor=(0.5, -0.02))
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout(rect=(0, 0.12 + 0.04 * (len(names) // 4), 1, 1))
    return fig


def frontier(
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    xlabel: str = "L0 (active latents per sample)",
    styles: dict[str, dict] | None = None,
    reference: dict[str, float] | None = None,
    suptitle: str = "",
) -> plt.Figure:
    """Metric-vs-sparsity curves, mean over seeds with ±1 std bars in both directions.

    panels: panel title (the metric) -> label -> (x [n_seeds, n_points], y [n_seeds, n_points]);
    styles: label -> matplotlib line keyword arguments; reference: label -> x of a vertical line.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.2), squeeze=False)
    markers = "osD^vP*Xh<>p"
    for ax, (title, series) in zip(axes[0], panels.items()):
        for i, (label, (x, y)) in enumerate(series.items()):
            x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
            style = {"marker": markers[i % len(markers)], "ms": 4, **(styles or {}).get(label, {})}
            ax.errorbar(x.mean(0), y.mean(0), xerr=x.std(0), yerr=y.std(0), label=label, capsize=2, **style)
        for label, x0 in (reference or {}).items():
            ax.axvline(x0, color="grey", ls=":", lw=1)
            ax.text(x0, ax.get_ylim()[1], f" {label}", va="top", fontsize="x-small", color="grey")
        ax.set(xlabel=xlabel, ylabel=f"{title} (higher is better)", title=title)
    # one legend for every panel, beside them, so it covers no curve
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def by_setting(
    settings: Sequence[str],
    panels: dict[str, dict[str, np.ndarray]],
    xlabel: str,
    suptitle: str = "",
    hlines: dict[str, dict[str, float]] | None = None,
    styles: dict[str, dict] | None = None,
) -> plt.Figure:
    """Mean ±1 std over seeds of each series at categorical ``settings``, one panel per metric.

    panels: metric -> label -> [n_seeds, len(settings)]; hlines: metric -> label -> a horizontal
    reference (e.g. another method's mean), dashed; styles: label -> line keyword arguments.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 3.6), squeeze=False)
    x = np.arange(len(settings))
    for ax, (title, series) in zip(axes[0], panels.items()):
        for label, ys in series.items():
            ys = np.asarray(ys, dtype=float)
            ax.errorbar(x, np.nanmean(ys, 0), yerr=np.nanstd(ys, 0), marker="o", capsize=3, label=label,
                        **(styles or {}).get(label, {}))
        for i, (label, y0) in enumerate((hlines or {}).get(title, {}).items()):
            style = {"color": sns.color_palette("dark")[i % 10], **(styles or {}).get(label, {}), "ls": "--", "lw": 1}
            ax.axhline(y0, label=label, **style)
        ax.set_xticks(x, [str(s) for s in settings])
        ax.set(xlabel=xlabel, title=title)
    axes[0, -1].legend(fontsize="x-small", loc="best")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def frontiers(
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    xlabel: str,
    ylabel: str,
    suptitle: str = "",
    logx: bool = False,
    logy: bool = False,
) -> plt.Figure:
    """Sweep curves per seed (thin) and their mean (thick, marked), one panel per key.

    panels: title -> label -> (x [n_seeds, n_points], y [n_seeds, n_points]), e.g. L0 and FVU
    over an L1 sweep.
    """
    logx = check_bool("logx", logx)
    logy = check_bool("logy", logy)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items()):
        for color, (label, (xs, ys)) in zip(sns.color_palette(n_colors=len(series)), series.items()):
            xs, ys = np.atleast_2d(np.asarray(xs, float)), np.atleast_2d(np.asarray(ys, float))
            for xi, yi in zip(xs, ys):
                ax.plot(xi, yi, color=color, alpha=0.25, lw=0.8)
            ax.plot(np.nanmean(xs, 0), np.nanmean(ys, 0), color=color, marker="o", lw=2, label=label)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.legend(fontsize="small")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def intervals(
    labels: Sequence[str],
    diff: Sequence[float],
    low: Sequence[float],
    high: Sequence[float],
    xlabel: str,
    groups: Sequence[str] | None = None,
    title: str = "",
    ax: plt.Axes | None = None,
) -> plt.Figure:
    """A forest plot: one paired difference per row with its interval, and the zero line.

    labels, diff, low, high: [n] (e.g. from :func:`sae_ortho.analysis.stats.compare`); ``groups`` colours rows.
    """
    fig = None
    n = len(labels)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 0.3 * n + 1.3))
    diff, low, high = (np.asarray(v, float) for v in (diff, low, high))
    keys = list(dict.fromkeys(groups or ["all"]))
    palette = dict(zip(keys, sns.color_palette(n_colors=len(keys))))
    colors = [palette[g] for g in (groups or ["all"] * n)]
    y = np.arange(n)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.hlines(y, low, high, colors=colors, lw=2)
    ax.scatter(diff, y, c=colors, zorder=3, s=18)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)
    if fig is not None:
        fig.tight_layout()
    return ax.figure if fig is None else fig
