"""Figures of downstream-task results, written as PNG files.

matplotlib is imported inside each function, so importing this module costs nothing. Figures are drawn
on a :class:`matplotlib.figure.Figure` with an Agg canvas attached directly: pyplot is never imported,
so the process-wide backend is left as it was (a notebook keeps its own) and no figure is left open in
pyplot's registry. Each function writes one PNG (creating its folder) and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from plmforge.core.metrics import spearman


def _new_figure(width: float, height: float) -> Any:
    """A figure on an Agg canvas of its own, outside pyplot (nothing global is touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=150)
    return path


def confusion_matrix_png(matrix: np.ndarray, class_names: list[str], path: str | Path, title: str) -> Path:
    """Confusion matrix (rows true, columns predicted): colours normalised per row, counts in the cells."""
    matrix = np.asarray(matrix)
    classes = matrix.shape[0]
    if matrix.ndim != 2 or matrix.shape[1] != classes:
        raise ValueError(f"a confusion matrix is square [C, C], got shape {matrix.shape}")
    if len(class_names) != classes:
        raise ValueError(f"{len(class_names)} class names for a {classes}x{classes} confusion matrix")
    totals = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    fractions = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0)

    size = max(5.0, 0.55 * classes + 3.0)
    figure = _new_figure(size + 1.0, size)
    axes = figure.add_subplot()
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of the true class")
    fontsize = 9 if classes <= 8 else 7
    for i in range(classes):
        for j in range(classes):
            colour = "white" if fractions[i, j] > 0.5 else "black"
            axes.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color=colour, fontsize=fontsize)
    ticks = np.arange(classes)
    axes.set_xticks(ticks)
    axes.set_yticks(ticks)
    axes.set_xticklabels(class_names, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticklabels(class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def contact_map_png(probabilities: np.ndarray, labels: np.ndarray, path: str | Path, title: str) -> Path:
    """Predicted contact probabilities (upper triangle) against true contacts (lower triangle).

    Cell ``(i, j)`` with ``i < j`` shows ``probabilities[i, j]``; its mirror ``(j, i)`` shows the label of
    the same pair, ``labels[i, j]`` (1 contact, 0 none), on the same colour scale. Pairs labelled ``-1``
    are grey in the lower triangle, and the diagonal is grey.
    """
    import matplotlib

    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    if probabilities.ndim != 2 or probabilities.shape[0] != probabilities.shape[1]:
        raise ValueError(f"contact probabilities must be a square [L, L] array, got shape {probabilities.shape}")
    if labels.shape != probabilities.shape:
        raise ValueError(f"contact labels of shape {labels.shape} do not match probabilities {probabilities.shape}")
    length = probabilities.shape[0]
    upper = np.triu(np.ones((length, length), dtype=bool), k=1)
    truth = labels.T.astype(np.float64)  # truth[j, i] = labels[i, j]: the lower triangle mirrors the upper
    shown = np.where(upper, probabilities, truth)
    grey = np.eye(length, dtype=bool) | (upper.T & (labels.T == -1))
    image_data = np.ma.masked_array(shown, mask=grey)

    figure = _new_figure(6.5, 5.5)
    axes = figure.add_subplot()
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="0.75")
    image = axes.imshow(image_data, cmap=colours, vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label("contact probability (upper) / true contact (lower)")
    box = {"facecolor": "black", "alpha": 0.5, "edgecolor": "none", "pad": 2}
    axes.text(0.98, 0.98, "predicted", transform=axes.transAxes, ha="right", va="top", color="white", fontsize=9,
              bbox=box)
    axes.text(0.02, 0.02, "true", transform=axes.transAxes, ha="left", va="bottom", color="white", fontsize=9,
              bbox=box)
    axes.set_xlabel("residue j")
    axes.set_ylabel("residue i")
    axes.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def regression_scatter_png(pred: np.ndarray, target: np.ndarray, path: str | Path, title: str) -> Path:
    """Predicted against true values (items with a NaN target left out), with the Spearman ρ in the title."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"predictions of shape {pred.shape} do not match targets of shape {target.shape}")
    rho = spearman(pred, target)
    kept = ~np.isnan(target)
    x, y = target[kept].ravel(), pred[kept].ravel()

    figure = _new_figure(5.5, 5.0)
    axes = figure.add_subplot()
    axes.scatter(x, y, s=10, alpha=0.6, edgecolors="none")
    finite = np.concatenate([x, y[np.isfinite(y)]])
    if finite.size:
        low, high = float(finite.min()), float(finite.max())
        axes.plot([low, high], [low, high], color="0.5", linestyle="--", linewidth=1, label="y = x")
        axes.legend(loc="upper left")
    axes.set_xlabel("true value")
    axes.set_ylabel("predicted value")
    axes.set_title(f"{title}\nSpearman ρ = {rho:.3f} (n = {x.size})")
    figure.tight_layout()
    return _save(figure, path)
