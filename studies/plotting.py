"""Shared plotting style for the studies in `studies/` (one look for every PNG in `studies/results/`).

Every study plots "mean +- std over seeds" and, where the seed states a figure, a seed-reference line or
marker next to ours.  Usage (a study puts its own directory on `sys.path`, as they all do):

    import plotting

    with plotting.style():
        fig, axes = plotting.figure(ncols=2)
        plotting.errorbar(axes[0], x, per_seed, label="ours")   # per_seed: (n_seeds, len(x))
        plotting.seed_line(axes[0], 0.01, label="seed Fig 3.6")
        plotting.save(fig, "studies/results/my_study.png")

    text = plotting.mean_std_text(values, digits=3)  # "0.512 +- 0.013 (n=3)", for the JSON's "ours"

The standard deviation is the sample one (ddof=1) over seeds; with a single seed it is 0 and the text
says n=1, so a reader sees it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 120
# Okabe-Ito: distinguishable for colour-blind readers and in greyscale print.
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
SEED_COLOR = "#555555"
PANEL_SIZE = (4.2, 3.4)  # inches per subplot

_RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=COLORS),
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
    "errorbar.capsize": 3,
    "legend.frameon": False,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Applies the shared rc settings inside the block (create and save figures inside it)."""
    with matplotlib.rc_context(_RC):
        yield


def use_style() -> None:
    """Applies the shared rc settings for the rest of the process (for scripts that plot in several places)."""
    matplotlib.rcParams.update(_RC)


def figure(nrows: int = 1, ncols: int = 1, panel_size: tuple[float, float] = PANEL_SIZE, **kwargs):
    """`plt.subplots` sized per panel; `axes` is always a flat array (index it as axes[i])."""
    width, height = panel_size
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kwargs)
    return fig, axes.ravel()


def save(fig, path: str) -> str:
    """Writes `fig` as PNG at the shared dpi (creating the folder), closes it, returns the path."""
    if not str(path).lower().endswith(".png"):
        raise ValueError(f"plotting.save writes PNG; path {path!r} does not end with .png")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def mean_std(per_seed, axis: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and sample std (ddof=1; 0 for one seed) along the seed axis, and the number of seeds."""
    values = np.asarray(per_seed, dtype=np.float64)
    if values.ndim == 0 or values.shape[axis] == 0:
        raise ValueError(f"mean_std needs at least one seed along axis {axis}; got shape {values.shape}")
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    std = values.std(axis=axis, ddof=1) if n > 1 else np.zeros_like(mean)
    return mean, std, n


def mean_std_text(per_seed: Sequence[float], digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    """'0.512 +- 0.013 (n=3)' for a 1-D list of per-seed values (`scale`=100, unit='%' for percents)."""
    values = np.asarray(per_seed, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("mean_std_text needs at least one per-seed value; got an empty list")
    mean, std, n = mean_std(values * scale)
    return f"{float(mean):.{digits}f}{unit} +- {float(std):.{digits}f}{unit} (n={n})"


def errorbar(ax, x, per_seed, label: str | None = None, color=None, marker: str = "o", **kwargs):
    """Mean +- std over seeds as a line with error bars; per_seed has shape (n_seeds, len(x))."""
    mean, std, n = mean_std(per_seed)
    if label is not None:
        label = f"{label} (n={n})"
    return ax.errorbar(x, mean, yerr=std, label=label, color=color, marker=marker, **kwargs)


def band(ax, x, per_seed, label: str | None = None, color=None, alpha: float = 0.2, **kwargs):
    """Mean line with a shaded +- std band (for dense x, e.g. training curves)."""
    mean, std, n = mean_std(per_seed)
    line, = ax.plot(x, mean, label=None if label is None else f"{label} (n={n})", color=color, **kwargs)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=alpha, linewidth=0)
    return line


def bars(ax, labels: Sequence[str], per_seed_by_bar: Sequence[Sequence[float]], color=None, **kwargs):
    """One bar per label at its mean with a +- std error bar; each entry holds that bar's per-seed values."""
    if len(labels) != len(per_seed_by_bar):
        raise ValueError(f"bars: {len(labels)} labels but {len(per_seed_by_bar)} value lists")
    stats = [mean_std(values) for values in per_seed_by_bar]
    positions = np.arange(len(labels))
    container = ax.bar(positions, [m for m, _, _ in stats], yerr=[s for _, s, _ in stats],
                       color=color if color is not None else COLORS[0], capsize=3, **kwargs)
    ax.set_xticks(positions)
    long_labels = max(map(len, labels), default=0) > 8
    ax.set_xticklabels(labels, rotation=30 if long_labels else 0, ha="right" if long_labels else "center")
    return container


def seed_line(ax, value: float, label: str = "seed", axis: str = "y"):
    """A dashed grey reference line at the seed's figure (horizontal for axis='y', vertical for 'x')."""
    if axis == "y":
        return ax.axhline(value, color=SEED_COLOR, linestyle="--", linewidth=1.0, label=label)
    if axis == "x":
        return ax.axvline(value, color=SEED_COLOR, linestyle="--", linewidth=1.0, label=label)
    raise ValueError(f"seed_line axis must be 'x' or 'y'; got {axis!r}")


def seed_marker(ax, x, y, label: str = "seed"):
    """The seed's point(s) as open grey stars, to sit next to our mean +- std markers."""
    return ax.plot(x, y, linestyle="none", marker="*", markersize=10, markerfacecolor="none",
                   markeredgecolor=SEED_COLOR, label=label)[0]
