"""Figures of downstream-task results, written as PNG files.

matplotlib is imported inside each function, so importing this module costs nothing. Figures are drawn
on a :class:`matplotlib.figure.Figure` with an Agg canvas attached directly: pyplot is never imported,
so the process-wide backend is left as it was (a notebook keeps its own) and no figure is left open in
pyplot's registry.

Each figure is laid out in inches, not by ``tight_layout``: the plot's size and place depend only on what
is the same for every run of a task (its class names, say), never on the title or the scores, so the same
figure of two runs lines up side by side in MLflow's compare view, and a long title wraps (or shrinks)
inside a band of fixed height instead of squeezing the plot. The title is also the PNG's ``Title`` text
field, so it can be read without looking at the picture.

File names follow ``<task label>.<representation label>.<what>.png`` (:meth:`FigureContext.file_name`):
logged at the root of a run's artifacts, the same figure of several runs is what MLflow 3's compare view
offers as a "common artifact" (it lists only root-level files whose path all compared runs share).
"""

from __future__ import annotations

import inspect
import os
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plmforge.core.metrics import spearman

DPI = 150
TITLE_BAND = 0.65  # inches above the plot kept for the title (3 lines), whatever its length
TITLE_SIZES = (11.0, 10.0, 9.0, 8.0)  # points, tried in turn until the wrapped title fits the band
TICK_LABEL_CHARS = 24  # longer class names are cut (with an ellipsis) so that they cannot squeeze the plot


@dataclass(frozen=True)
class FigureContext:
    """What a task's figures show, for their titles and file names (given to :meth:`Task.figures`).

    ``task`` and ``representation`` are labels as in metric keys and run names (``ss3``, ``onehot``);
    ``run`` tells the run apart from its siblings (its ``--set`` overrides in short form, ``lr=0.002``,
    else the start of its run id); ``metrics`` are the test metrics, headline first, with ``intervals``
    (bootstrap, may be empty).
    """

    task: str
    representation: str = "model"
    run: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def file_name(self, what: str, suffix: str = ".png") -> str:
        """``ss3.model.confusion.png``: the same for the same figure of every run, unique within a run."""
        parts = [_file_safe(p) for p in (self.task, self.representation, what) if p]
        return ".".join(parts) + suffix

    @property
    def score(self) -> str:
        """``q3 0.484 [0.458, 0.510]``: the headline (first) test metric with its interval; "" when none."""
        for name, value in self.metrics.items():
            if not np.isfinite(value):
                return f"{name} n/a"
            low, high = self.intervals.get(name, (np.nan, np.nan))
            interval = f" [{low:.3f}, {high:.3f}]" if np.isfinite(low) and np.isfinite(high) else ""
            return f"{name} {value:.3f}{interval}"
        return ""

    @property
    def title(self) -> str:
        """``ss3 · model · lr=0.002 — q3 0.484 [0.458, 0.510]``: task, representation, run and score."""
        head = " · ".join(part for part in (self.task, self.representation, self.run) if part)
        return f"{head} — {self.score}" if self.score else head


def _file_safe(text: str) -> str:
    """A label as a file-name part: characters other than letters, digits and ``_+-=,`` become ``_``."""
    return re.sub(r"[^\w+\-=,]", "_", str(text)) or "_"


def task_figures(task: Any, predictions: list[np.ndarray], split: Any, data: Any, directory: Path,
                 context: FigureContext) -> list[Path]:
    """``task.figures(...)`` with ``context``, every file named as :meth:`FigureContext.file_name` says.

    A task plugin written before the context existed overrides ``figures`` without it: it is called
    the old way, and the files it returns are renamed to ``<task>.<representation>.<their name>``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if _takes_context(task.figures):
        paths = task.figures(predictions, split, data, directory, context=context)
    else:
        paths = task.figures(predictions, split, data, directory)
    prefix = context.file_name("", "")
    out = []
    for path in map(Path, paths or []):
        if not path.name.startswith(prefix):
            target = directory / context.file_name(path.stem, path.suffix)
            os.replace(path, target)
            path = target
        out.append(path)
    return out


def _takes_context(method: Any) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "context" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


# -- layout ---------------------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Any:
    """A figure on an Agg canvas of its own, outside pyplot (nothing global is touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _axes_at(figure: Any, left: float, bottom: float, width: float, height: float) -> Any:
    """Axes placed in inches from the figure's lower left corner."""
    fig_width, fig_height = figure.get_size_inches()
    return figure.add_axes((left / fig_width, bottom / fig_height, width / fig_width, height / fig_height))


def _text_inches(texts: list[str], size: float) -> tuple[float, float]:
    """Width and height in inches of the widest and tallest of ``texts`` at ``size`` points."""
    from matplotlib.textpath import TextPath

    if not texts:
        return 0.0, 0.0
    extents = [TextPath((0, 0), text or " ", size=size).get_extents() for text in texts]
    # TextPath measures in points; add the font's line height for the vertical size
    return max(e.width for e in extents) / 72.0, max(size * 1.2, max(e.height for e in extents)) / 72.0


def _title(figure: Any, title: str, base: float) -> Any:
    """The title, wrapped to the figure's width inside the band above ``base`` inches from the figure's
    bottom (smaller type where it needs it); its last line sits just above the plot."""
    width, height = figure.get_size_inches()
    usable = width - 0.3
    lines: list[str] = []
    size = TITLE_SIZES[-1]
    for size in TITLE_SIZES:
        max_lines = int((TITLE_BAND - 0.12) * 72.0 // (size * 1.25))
        chars = max(10, int(usable * 72.0 / (size * 0.62)))
        lines = [line for paragraph in title.split("\n") for line in textwrap.wrap(paragraph, chars) or [""]]
        while len(lines) > 1 and _text_inches(lines, size)[0] > usable and chars > 10:
            chars -= 4  # the estimate was optimistic for this text: wrap narrower
            lines = [line for paragraph in title.split("\n") for line in textwrap.wrap(paragraph, chars) or [""]]
        if len(lines) <= max_lines:
            break
    else:  # even the smallest type does not fit: cut what is left over
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:-1] + "…"
    return figure.text(0.5, (base + 0.12) / height, "\n".join(lines), ha="center", va="bottom", fontsize=size,
                       linespacing=1.15)


def _short(names: list[str], limit: int = TICK_LABEL_CHARS) -> list[str]:
    """Class names for tick labels: cut after ``limit`` characters; cut names that collide get their index."""
    cut = [name if len(name) <= limit else name[:limit - 1].rstrip() + "…" for name in names]
    if len(set(cut)) < len(cut):
        cut = [f"{i}: {name}" if cut.count(name) > 1 else name for i, name in enumerate(cut)]
    return cut


def _save(figure: Any, path: str | Path, title: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI, metadata={"Title": title})
    return path


def png_title(path: str | Path) -> str:
    """The title a figure of this module wrote into its PNG (its ``Title`` text field), "" if none."""
    from PIL import Image

    with Image.open(path) as image:
        return str(image.info.get("Title", ""))


# -- figures --------------------------------------------------------------------------------------------
def confusion_matrix_figure(matrix: np.ndarray, class_names: list[str], title: str) -> Any:
    """Confusion matrix (rows true, columns predicted): colours normalised per row, counts in the cells.

    The matrix is 0.42 inch a class (at least 2.6 inches); the margins depend only on the class names,
    which are cut at :data:`TICK_LABEL_CHARS` characters.
    """
    matrix = np.asarray(matrix)
    classes = matrix.shape[0]
    if matrix.ndim != 2 or matrix.shape[1] != classes:
        raise ValueError(f"a confusion matrix is square [C, C], got shape {matrix.shape}")
    if len(class_names) != classes:
        raise ValueError(f"{len(class_names)} class names for a {classes}x{classes} confusion matrix")
    totals = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    fractions = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0)

    tick_size = 8.0
    names = _short([str(name) for name in class_names])
    side = max(2.6, 0.42 * classes)
    label_width, label_height = _text_inches(names, tick_size)
    left = label_width + 0.55  # tick labels, then the axis label
    turn = 45 if max(len(name) for name in names) > 2 else 0  # letters (H, E, C) stand upright
    bottom = (label_width + label_height) * (0.71 if turn else 0.0) + label_height + 0.5  # then the axis label
    right = 1.3  # colour bar with its ticks and label
    width = max(left + side + right, 5.0)
    left += (width - (left + side + right)) / 2  # a narrow matrix sits in the middle
    height = bottom + side + 0.12 + TITLE_BAND
    figure = _new_figure(width, height)
    axes = _axes_at(figure, left, bottom, side, side)
    colorbar_axes = _axes_at(figure, left + side + 0.15, bottom, 0.16, side)
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    colorbar = figure.colorbar(image, cax=colorbar_axes)
    colorbar.set_label("fraction of the true class")
    fontsize = 9 if classes <= 8 else 7
    for i in range(classes):
        for j in range(classes):
            colour = "white" if fractions[i, j] > 0.5 else "black"
            axes.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color=colour, fontsize=fontsize)
    ticks = np.arange(classes)
    axes.set_xticks(ticks)
    axes.set_yticks(ticks)
    axes.set_xticklabels(names, rotation=turn, ha="right" if turn else "center", rotation_mode="anchor",
                         fontsize=tick_size)
    axes.set_yticklabels(names, fontsize=tick_size)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    _title(figure, title, bottom + side)
    return figure


def confusion_matrix_png(matrix: np.ndarray, class_names: list[str], path: str | Path, title: str) -> Path:
    """:func:`confusion_matrix_figure`, written to ``path``."""
    return _save(confusion_matrix_figure(matrix, class_names, title), path, title)


def contact_map_figure(probabilities: np.ndarray, labels: np.ndarray, title: str) -> Any:
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

    side, left, bottom = 4.4, 0.8, 0.6
    figure = _new_figure(left + side + 1.6, bottom + side + 0.12 + TITLE_BAND)
    axes = _axes_at(figure, left, bottom, side, side)
    colorbar_axes = _axes_at(figure, left + side + 0.15, bottom, 0.16, side)
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="0.75")
    image = axes.imshow(image_data, cmap=colours, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    colorbar = figure.colorbar(image, cax=colorbar_axes)
    colorbar.set_label("contact probability (upper) / true contact (lower)")
    box = {"facecolor": "black", "alpha": 0.5, "edgecolor": "none", "pad": 2}
    axes.text(0.98, 0.98, "predicted", transform=axes.transAxes, ha="right", va="top", color="white", fontsize=9,
              bbox=box)
    axes.text(0.02, 0.02, "true", transform=axes.transAxes, ha="left", va="bottom", color="white", fontsize=9,
              bbox=box)
    axes.set_xlabel("residue j")
    axes.set_ylabel("residue i")
    _title(figure, title, bottom + side)
    return figure


def contact_map_png(probabilities: np.ndarray, labels: np.ndarray, path: str | Path, title: str) -> Path:
    """:func:`contact_map_figure`, written to ``path``."""
    return _save(contact_map_figure(probabilities, labels, title), path, title)


def regression_scatter_figure(pred: np.ndarray, target: np.ndarray, title: str) -> Any:
    """Predicted against true values (items with a NaN target left out); Spearman ρ and n in a corner."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"predictions of shape {pred.shape} do not match targets of shape {target.shape}")
    rho = spearman(pred, target)
    kept = ~np.isnan(target)
    x, y = target[kept].ravel(), pred[kept].ravel()

    side, left, bottom = 4.2, 0.9, 0.6
    figure = _new_figure(left + side + 0.4, bottom + side + 0.12 + TITLE_BAND)
    axes = _axes_at(figure, left, bottom, side, side)
    axes.scatter(x, y, s=10, alpha=0.6, edgecolors="none")
    finite = np.concatenate([x, y[np.isfinite(y)]])
    if finite.size:
        low, high = float(finite.min()), float(finite.max())
        axes.plot([low, high], [low, high], color="0.5", linestyle="--", linewidth=1, label="y = x")
        axes.legend(loc="upper left")
    axes.text(0.98, 0.02, f"Spearman ρ = {rho:.3f}\nn = {x.size}", transform=axes.transAxes, ha="right",
              va="bottom", fontsize=9)
    axes.set_xlabel("true value")
    axes.set_ylabel("predicted value")
    _title(figure, title, bottom + side)
    return figure


def regression_scatter_png(pred: np.ndarray, target: np.ndarray, path: str | Path, title: str) -> Path:
    """:func:`regression_scatter_figure`, written to ``path``."""
    return _save(regression_scatter_figure(pred, target, title), path, title)
