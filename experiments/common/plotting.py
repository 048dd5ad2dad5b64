"""Plotting helpers (matplotlib, Agg backend): heatmaps, curves with bands, log-log fits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats as _stats  # noqa: E402

__all__ = ["heatmap_triptych", "curves_with_band", "save", "plt", "is_valid_png"]


def save(fig, path: str | Path) -> Path:
    """Saves ``fig`` as PNG (atomically: write a temporary file, then rename) and closes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def is_valid_png(path: str | Path) -> bool:
    """True for a non-empty file with the PNG signature that matplotlib can read back."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return False
    img = plt.imread(path)
    return img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0


def _annotated(ax, grid, xs, ys, title, cmap, vmin=None, vmax=None, fmt="{:.1f}"):
    im = ax.imshow(grid, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    ax.set_title(title)
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(grid[i, j]):
                # Dark cells get white text, light ones black (luminance of the cell's colour).
                r, g, b, _ = im.cmap(im.norm(grid[i, j]))
                color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
                ax.text(
                    j, i, fmt.format(grid[i, j]), ha="center", va="center", fontsize=8, color=color
                )
    return im


def heatmap_triptych(
    left: np.ndarray,
    right: np.ndarray,
    xs,
    ys,
    *,
    titles=("SP", "PS", "SP - PS"),
    xlabel="rank ratio delta",
    ylabel="local epochs E",
    suptitle="",
):
    """Two heatmaps on a shared colour scale and their difference (diverging, centred at 0).

    Args:
      left, right: ``(len(ys), len(xs))`` values (NaN = missing cell).
    """
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    both = np.concatenate([left[np.isfinite(left)], right[np.isfinite(right)]])
    vmin, vmax = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    for ax, grid, title in zip(axes[:2], (left, right), titles[:2], strict=True):
        im = _annotated(ax, grid, xs, ys, title, "viridis", vmin, vmax)
        fig.colorbar(im, ax=ax)
    diff = left - right
    lim = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0
    im = _annotated(
        ax=axes[2],
        grid=diff,
        xs=xs,
        ys=ys,
        title=titles[2],
        cmap="RdBu_r",
        vmin=-lim,
        vmax=lim,
        fmt="{:+.1f}",
    )
    fig.colorbar(im, ax=axes[2])
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def curves_with_band(ax, x, samples, label, *, level=0.95, log=False, color=None):
    """Plots the mean over the first axis of ``samples`` ``(n, T)`` with a t-interval band."""
    samples = np.asarray(samples, float)
    mean = samples.mean(0)
    (line,) = ax.plot(x, mean, label=label, color=color)
    n = samples.shape[0]
    if n > 1:
        half = _stats.t.ppf(0.5 + level / 2, n - 1) * samples.std(0, ddof=1) / np.sqrt(n)
        lo, hi = mean - half, mean + half
        if log:
            lo = np.maximum(lo, np.nanmin(samples[samples > 0]) if (samples > 0).any() else 1e-30)
        ax.fill_between(x, lo, hi, alpha=0.25, color=line.get_color())
    if log:
        ax.set_yscale("log")
    return line


def plot_partition(partition: Any, ax: Any = None, *, class_names: Any = None) -> Any:
    """Stacked bar chart of the class histogram: one bar per client, one colour per class.

    Args:
      partition: an ``abo_jax.data.Partition``.
      ax: a matplotlib ``Axes``; ``None`` creates a new figure with ``pyplot``.
      class_names: optional legend labels, one per class.

    Returns:
      The ``Axes``.
    """
    hist = np.asarray(partition.class_histogram)
    m, num_classes = hist.shape
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} entries, expected {num_classes}")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.4 * m + 2.0), 3.5))
    cmap = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20"]
    clients = np.arange(m)
    bottom = np.zeros(m)
    for c in range(num_classes):
        label = str(class_names[c]) if class_names is not None else str(c)
        ax.bar(clients, hist[:, c], bottom=bottom, color=cmap(c % cmap.N), label=label, width=0.8)
        bottom += hist[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("examples")
    ax.set_title(partition.scheme)
    if m <= 40:
        ax.set_xticks(clients)
    ax.legend(title="class", fontsize="small", ncols=1 + num_classes // 10, loc="best")
    return ax
