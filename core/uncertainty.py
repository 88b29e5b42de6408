"""Uncertainty of task metrics: percentile bootstrap over test proteins, paired and seed-pooled comparisons.

Every task test metric gets an interval from ``scipy.stats.bootstrap`` over the test PROTEINS (chains,
peptides; never residues, which are not independent). The statistic recomputes the task's own metrics on
the resampled proteins, so the interval is that of exactly the number reported. The resamples depend only
on the number of proteins, the number of resamples B and the seed: two runs scored on the same test
proteins with the same B and seed see the same B resamples, so their bootstrap distributions are paired
replicate by replicate and the difference of two runs has an interval that cancels the shared protein
sampling noise (:func:`paired_difference`).

What is stored per (task, representation) is an :class:`Outcomes`, written as a plain ``.npz`` (no object
arrays, read back with ``allow_pickle=False``): the point metrics and bounds, the bootstrap distribution,
and the per-protein labels and predictions for residue- and protein-level tasks.

Own code beyond scipy: percentiles are taken with ``np.nanpercentile`` over the distribution scipy returns
(scipy's own bounds turn NaN as soon as one resample has an undefined metric, e.g. AUROC on a resample with
one class); the seed pooling (a two-level bootstrap over runs and proteins) has no scipy counterpart.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from plmforge.core.errors import PlmforgeError

if TYPE_CHECKING:
    from plmforge.core.task import Task, TaskData, TaskSplit

#: Version of the ``.npz`` layout; files of another (or no) version are refused by :func:`read_outcomes`.
FORMAT_VERSION = 1
_REQUIRED = ("protein_ids", "metric_names", "point", "low", "high", "replicates", "resamples", "seed",
             "confidence", "head_seeds")


@dataclass
class Outcomes:
    """One representation's results on one task's test proteins, with the bootstrap behind its intervals.

    ``replicates[b, m]`` is metric ``m`` on bootstrap resample ``b`` (NaN where undefined); with equal
    ``protein_ids``, ``resamples`` and ``seed`` two Outcomes share their resamples. ``labels`` are the
    per-item labels of all test proteins back to back and ``offsets`` ([n + 1]) where each protein's items
    start; ``predictions`` are ``[head_seeds, items, outputs]`` float16 (logits, or values for regression),
    one slice per head seed. All three are None for pair-level tasks (contact maps are too large to keep).
    """

    protein_ids: np.ndarray
    metric_names: list[str]
    point: np.ndarray
    low: np.ndarray
    high: np.ndarray
    replicates: np.ndarray
    resamples: int
    seed: int
    confidence: float
    head_seeds: int
    labels: np.ndarray | None = None
    predictions: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def column(self, metric: str) -> int:
        """Index of ``metric`` in ``metric_names`` (KeyError naming the metrics there are)."""
        try:
            return self.metric_names.index(metric)
        except ValueError:
            raise KeyError(f"no metric {metric!r} (there are {', '.join(self.metric_names)})") from None

    def interval(self, metric: str) -> tuple[float, float, float]:
        """``(point, low, high)`` of one metric."""
        m = self.column(metric)
        return float(self.point[m]), float(self.low[m]), float(self.high[m])


# ----------------------------------------------------------------------------------------------------------
# Per-protein parts (the fast path)


@dataclass
class MetricParts:
    """Per-protein additive parts of a task's metrics, so a bootstrap can recompute them for all resamples at once.

    ``parts [n, K]`` has one row per protein; the metrics of any multiset of proteins are ``combine`` of the
    sum of their rows: ``combine(totals [..., K]) -> [..., M]``, the metrics ``names`` in the order
    :meth:`Task.metrics` returns them. Counts (a confusion matrix) and means (a value and a 0/1 "defined"
    column, divided in ``combine``) both fit.
    """

    names: list[str]
    parts: np.ndarray
    combine: Callable[[np.ndarray], np.ndarray]



def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (no warning)."""
    with np.errstate(all="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def contact_parts(list_of_logits: list[np.ndarray], list_of_labels: list[np.ndarray]) -> MetricParts:
    """Parts of :func:`plmforge.core.metrics.contact_metrics`: each protein's precisions and whether defined.

    The metrics are means over proteins of per-protein precisions (proteins without candidate pairs left
    out), so ``parts`` are ``[precision or 0 (6), defined 0/1 (6)]`` and ``combine`` divides their sums.
    """
    from plmforge.core import metrics as m

    names = [f"{name}_P_L" if k == 1 else f"{name}_P_L{k}" for name in ("long", "medium") for k in m.CONTACT_TOPS]
    rows = []
    for logits, labels in zip(list_of_logits, list_of_labels, strict=True):
        length = np.asarray(labels).shape[0]
        values = [m.contact_precision(logits, labels, *m.CONTACT_RANGES[name], max(1, length // k))
                  for name in ("long", "medium") for k in m.CONTACT_TOPS]
        values = np.array(values, dtype=np.float64)
        defined = ~np.isnan(values)
        rows.append(np.concatenate([np.where(defined, values, 0.0), defined.astype(np.float64)]))
    width = len(names)
    parts = np.array(rows, dtype=np.float64).reshape(-1, 2 * width)

    def combine(totals: np.ndarray) -> np.ndarray:
        return _divide(totals[..., :width], totals[..., width:])

    return MetricParts(names, parts, combine)


def confusion_parts(predictions: list[np.ndarray], list_of_labels: list[np.ndarray], num_classes: int
                    ) -> MetricParts:
    """Parts of :func:`plmforge.core.metrics.classification_metrics` (``accuracy``, ``macro_f1``).

    Both are functions of the confusion matrix, which is the sum of the proteins' own: ``parts`` are the
    flattened per-protein matrices ``[C * C]``; macro F1 averages the classes present, as the metric does.
    """
    from plmforge.core import metrics as m

    rows = [m.confusion_matrix(np.asarray(p), np.asarray(y), num_classes).ravel()
            for p, y in zip(predictions, list_of_labels, strict=True)]
    parts = np.array(rows, dtype=np.float64).reshape(-1, num_classes * num_classes)

    def combine(totals: np.ndarray) -> np.ndarray:
        matrix = totals.reshape(*totals.shape[:-1], num_classes, num_classes)
        tp = np.diagonal(matrix, axis1=-2, axis2=-1)
        fp = matrix.sum(axis=-2) - tp
        fn = matrix.sum(axis=-1) - tp
        denominator = 2 * tp + fp + fn
        present = denominator > 0
        f1 = np.where(present, _divide(2 * tp, denominator), 0.0).sum(axis=-1)
        macro = _divide(f1, present.sum(axis=-1).astype(np.float64))
        accuracy = _divide(tp.sum(axis=-1), matrix.sum(axis=(-2, -1)))
        return np.stack([accuracy, macro], axis=-1)

    return MetricParts(["accuracy", "macro_f1"], parts, combine)


# ----------------------------------------------------------------------------------------------------------
# Bootstrap


def percentile_bounds(replicates: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each column, over the replicates where it is defined (all NaN: NaN)."""
    replicates = np.asarray(replicates, dtype=np.float64)
    if replicates.ndim == 1:
        replicates = replicates[:, None]
    alpha = (1.0 - confidence) / 2.0
    low = np.full(replicates.shape[1], np.nan)
    high = np.full(replicates.shape[1], np.nan)
    defined = ~np.all(np.isnan(replicates), axis=0) if len(replicates) else np.zeros(replicates.shape[1], bool)
    if defined.any():
        low[defined], high[defined] = np.nanpercentile(replicates[:, defined], [100 * alpha, 100 * (1 - alpha)],
                                                       axis=0)
    return low, high


def bootstrap_metrics(statistic: Callable[[np.ndarray], np.ndarray], n: int, resamples: int, seed: int,
                      confidence: float, vectorized: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(low [M], high [M], replicates [B, M])`` of a vector-valued statistic of protein indices.

    ``statistic(indices)`` gets the indices (int64, with repeats) of one resample of ``n`` proteins and
    returns the M metrics on those proteins. With ``vectorized`` it gets all resamples at once as
    ``indices [B, n]`` and returns ``[M, B]`` (scipy's convention); the resamples are the same either way.
    Resamples are drawn by ``scipy.stats.bootstrap`` from ``np.random.default_rng(seed)``; bounds are
    percentiles over the resamples where a metric is defined. With ``resamples`` 0 or fewer than two
    proteins the bounds are NaN (and the replicates NaN, or empty for 0 resamples).
    """
    from scipy import stats

    if resamples <= 0 or n < 2:
        probe = np.arange(n)
        width = np.asarray(statistic(probe[None, :], axis=-1) if vectorized else statistic(probe)).shape[0]
        nan = np.full(width, np.nan)
        return nan, nan.copy(), np.full((max(resamples, 0), width), np.nan)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        if vectorized:
            def function(indices: np.ndarray, axis: int = -1) -> np.ndarray:
                return np.asarray(statistic(indices, axis=axis), dtype=np.float64)
        else:
            def function(indices: np.ndarray) -> np.ndarray:
                return np.asarray(statistic(indices), dtype=np.float64)
        result = stats.bootstrap((np.arange(n),), function, vectorized=vectorized, method="percentile",
                                 n_resamples=resamples, confidence_level=confidence,
                                 rng=np.random.default_rng(seed))
        distribution = np.asarray(result.bootstrap_distribution, dtype=np.float64)
    replicates = distribution.T if distribution.ndim == 2 else distribution[:, None]
    low, high = percentile_bounds(replicates, confidence)
    return low, high, np.ascontiguousarray(replicates)


def _metric_row(values: dict[str, float], names: list[str]) -> np.ndarray:
    return np.array([float(values.get(name, np.nan)) for name in names], dtype=np.float64)


def task_outcomes(task: Task, predictions_per_head_seed: list[list[np.ndarray]], split: TaskSplit, data: TaskData,
                  resamples: int, seed: int, confidence: float) -> Outcomes:
    """The task's test metrics, averaged over head seeds, with bootstrap intervals over ``split``'s proteins.

    Each resample's statistic is the task's own :meth:`Task.metrics` on the resampled proteins, computed for
    every head seed's predictions and averaged, so the interval is that of the reported mean. A task may give
    per-protein parts its metrics are a function of (:meth:`Task.metric_parts`), which makes all resamples one
    vectorised computation; they are used only when they reproduce the point metrics. A metric that a
    resample leaves undefined (a ValueError from the task, or NaN) is NaN in that replicate.
    """
    if not predictions_per_head_seed:
        raise ValueError("task_outcomes needs the predictions of at least one head seed")
    runs = [list(predictions) for predictions in predictions_per_head_seed]
    per_seed = [task.metrics(predictions, split, data) for predictions in runs]
    names = list(per_seed[0])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        point = np.nanmean(np.stack([_metric_row(values, names) for values in per_seed]), axis=0) \
            if len(runs) > 1 else _metric_row(per_seed[0], names)
    n = len(split)
    fast = _fast_statistic(task, runs, split, data, names, point)
    if fast is not None:
        low, high, replicates = bootstrap_metrics(fast, n, resamples, seed, confidence, vectorized=True)
    else:
        def statistic(indices: np.ndarray) -> np.ndarray:
            subset = split.subset(indices)
            rows = []
            for predictions in runs:
                try:
                    rows.append(_metric_row(task.metrics([predictions[i] for i in indices], subset, data), names))
                except (ValueError, ZeroDivisionError, FloatingPointError):
                    rows.append(np.full(len(names), np.nan))
            return np.nanmean(np.stack(rows), axis=0) if len(rows) > 1 else rows[0]

        low, high, replicates = bootstrap_metrics(statistic, n, resamples, seed, confidence)
    labels, predictions, offsets = _per_protein(task, runs, split)
    return Outcomes(np.array(split.ids, dtype=str), names, point, low, high, replicates, int(resamples), int(seed),
                    float(confidence), len(runs), labels, predictions, offsets)


def _fast_statistic(task: Task, runs: list[list[np.ndarray]], split: TaskSplit, data: TaskData, names: list[str],
                    point: np.ndarray) -> Callable[..., np.ndarray] | None:
    """A vectorised statistic from the task's per-protein parts, or None (no parts, or they disagree).

    A resample's totals are its multiplicities times the parts: ``counts [B, n] @ parts [n, K]``.
    """
    hook = getattr(task, "metric_parts", None)
    if hook is None:
        return None
    parts = []
    for predictions in runs:
        got = hook(predictions, split, data)
        if got is None or list(got.names) != names or np.shape(got.parts) != (len(split), np.shape(got.parts)[-1]):
            return None
        parts.append(got)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = np.stack([np.asarray(p.combine(p.parts.sum(axis=0)), dtype=np.float64) for p in parts])
        check = np.nanmean(rows, axis=0) if len(rows) > 1 else rows[0]
    if not np.allclose(check, point, rtol=1e-9, atol=1e-12, equal_nan=True):
        return None  # parts that do not reproduce the task's metrics: the generic path

    n = len(split)

    def statistic(indices: np.ndarray, axis: int = -1) -> np.ndarray:
        indices = np.asarray(indices).reshape(-1, n)
        rows = np.repeat(np.arange(len(indices)), n)
        counts = np.bincount(rows * n + indices.ravel(), minlength=len(indices) * n).reshape(len(indices), n)
        values = np.stack([np.asarray(p.combine(counts @ p.parts), dtype=np.float64) for p in parts])  # [S, B, M]
        mean = np.nanmean(values, axis=0) if len(values) > 1 else values[0]
        return np.moveaxis(mean, -1, 0)  # [M, B]

    return statistic


def _per_protein(task: Task, runs: list[list[np.ndarray]], split: TaskSplit
                 ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Flat labels, ``[head seeds, items, outputs]`` float16 predictions and offsets; None for pair level."""
    if task.level == "pair" or not len(split):
        return None, None, None
    sizes = [int(np.size(y)) for y in split.labels]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    labels = np.concatenate([np.ravel(y) for y in split.labels])
    if labels.dtype.kind not in "iuf":
        labels = labels.astype(np.float64)
    predictions = np.stack([
        np.concatenate([np.reshape(np.asarray(p, dtype=np.float32), (size, -1)) for p, size in zip(run, sizes)])
        for run in runs]).astype(np.float16)
    return labels, predictions, offsets


# ----------------------------------------------------------------------------------------------------------
# Files


def write_outcomes(path: Path, outcomes: Outcomes) -> None:
    """Write ``outcomes`` as an ``.npz`` of plain arrays (atomic: a temporary file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "format_version": np.int64(FORMAT_VERSION),
        "protein_ids": np.asarray(outcomes.protein_ids, dtype=str),
        "metric_names": np.asarray(outcomes.metric_names, dtype=str),
        "point": np.asarray(outcomes.point, dtype=np.float64),
        "low": np.asarray(outcomes.low, dtype=np.float64),
        "high": np.asarray(outcomes.high, dtype=np.float64),
        "replicates": np.asarray(outcomes.replicates, dtype=np.float64).reshape(-1, len(outcomes.metric_names)),
        "resamples": np.int64(outcomes.resamples),
        "seed": np.int64(outcomes.seed),
        "confidence": np.float64(outcomes.confidence),
        "head_seeds": np.int64(outcomes.head_seeds),
    }
    for name in ("labels", "predictions", "offsets"):
        value = getattr(outcomes, name)
        if value is not None:
            arrays[name] = np.asarray(value)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:  # a file object: np.savez would append .npz to a name
        np.savez(handle, **arrays)
    os.replace(temporary, path)


def read_outcomes(path: Path) -> Outcomes:
    """The :class:`Outcomes` in ``path``; PlmforgeError naming the file if it is unreadable or of another layout."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise PlmforgeError(f"outcomes file {path}: cannot be read as plain numpy arrays ({exc})") from None
    version = arrays.get("format_version")
    if version is None or int(version) != FORMAT_VERSION:
        raise PlmforgeError(f"outcomes file {path}: layout version {None if version is None else int(version)}, "
                            f"this plmforge reads version {FORMAT_VERSION}")
    missing = [name for name in _REQUIRED if name not in arrays]
    if missing:
        raise PlmforgeError(f"outcomes file {path}: missing {', '.join(missing)}")
    names = [str(v) for v in arrays["metric_names"]]
    width = len(names)
    replicates = arrays["replicates"].astype(np.float64)
    shapes_ok = (all(arrays[k].shape == (width,) for k in ("point", "low", "high"))
                 and replicates.ndim == 2 and replicates.shape[1] == width
                 and arrays["protein_ids"].ndim == 1)
    if not shapes_ok:
        raise PlmforgeError(f"outcomes file {path}: arrays of inconsistent shapes for {width} metrics")
    return Outcomes(arrays["protein_ids"].astype(str), names, arrays["point"].astype(np.float64),
                    arrays["low"].astype(np.float64), arrays["high"].astype(np.float64), replicates,
                    int(arrays["resamples"]), int(arrays["seed"]), float(arrays["confidence"]),
                    int(arrays["head_seeds"]), arrays.get("labels"), arrays.get("predictions"), arrays.get("offsets"))


# ----------------------------------------------------------------------------------------------------------
# Comparisons


def paired(a: Outcomes, b: Outcomes) -> bool:
    """Whether the two bootstrap distributions share their resamples (same proteins in order, B and seed)."""
    return (a.resamples > 0 and a.resamples == b.resamples and a.seed == b.seed
            and len(a.replicates) == len(b.replicates) == a.resamples
            and a.protein_ids.shape == b.protein_ids.shape and bool(np.all(a.protein_ids == b.protein_ids)))


def paired_difference(a: Outcomes, b: Outcomes, metric: str, confidence: float
                      ) -> tuple[float, float, float] | None:
    """``(a - b, low, high)`` of one metric from the replicate-wise differences; None when not paired.

    Not paired: other test proteins (or order), another number of resamples or another seed, or no
    replicates; the caller then falls back to :func:`unpaired_difference`. KeyError if a lacks the metric.
    """
    if not paired(a, b) or metric not in b.metric_names:
        return None
    i, j = a.column(metric), b.column(metric)
    differences = a.replicates[:, i] - b.replicates[:, j]
    low, high = percentile_bounds(differences, confidence)
    return float(a.point[i] - b.point[j]), float(low[0]), float(high[0])


def unpaired_difference(a: tuple[float, float, float], b: tuple[float, float, float], confidence: float = 0.95
                        ) -> tuple[float, float, float]:
    """``(a - b, low, high)`` from two ``(point, low, high)`` intervals, as if independent (normal approximation).

    Each side's standard error is its interval's width over ``2 z``; the difference's is their root sum of
    squares. Wider than a paired interval when both were scored on the same proteins (their noise is shared
    but counted twice): the fallback for runs without outcomes files. NaN bounds when a side has none.
    """
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + confidence / 2))
    (pa, la, ha), (pb, lb, hb) = a, b
    se = np.sqrt(((ha - la) / (2 * z)) ** 2 + ((hb - lb) / (2 * z)) ** 2)
    difference = pa - pb
    return float(difference), float(difference - z * se), float(difference + z * se)


def pooled_over_seeds(runs: list[Outcomes], metric: str, confidence: float, seed: int = 0,
                      resamples: int | None = None) -> tuple[float, float, float, float]:
    """``(mean, sd, low, high)`` of one metric over seed replicates, with an interval that includes the seed spread.

    ``mean`` and ``sd`` (ddof 1; NaN for one run) are over the runs' point values. The interval is a
    two-level bootstrap: for each replicate b, draw as many runs as there are with replacement
    (``default_rng(seed)``) and average their replicate b, so both the choice of seed and the choice of test
    proteins vary. When the runs are aligned (same proteins, B and bootstrap seed) replicate b is the same
    protein resample in every run, which is what makes it a joint resample; otherwise each drawn run
    contributes an independently drawn replicate of its own. Runs without replicates contribute their point
    value (then only the seed spread is in the interval). ``resamples`` defaults to the runs' B (the
    smallest, when they differ; for runs without any, 1000).
    """
    if not runs:
        raise ValueError("pooled_over_seeds needs at least one run")
    points = np.array([run.point[run.column(metric)] for run in runs], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = float(np.nanmean(points)) if np.isfinite(points).any() else float("nan")
        sd = float(np.nanstd(points, ddof=1)) if np.isfinite(points).sum() > 1 else float("nan")
    columns = [run.replicates[:, run.column(metric)] if len(run.replicates) else np.array([point])
               for run, point in zip(runs, points)]
    available = [len(c) for c in columns if len(c) > 1]
    count = resamples if resamples is not None else (min(available) if available else 1000)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(runs), size=(count, len(runs)))  # [B, R]: which runs replicate b averages
    aligned = all(paired(runs[0], run) for run in runs[1:]) and len(runs[0].replicates) >= count > 0
    if aligned:
        table = np.stack([c[:count] for c in columns], axis=1)  # [B, R]
        values = table[np.arange(count)[:, None], drawn]
    else:
        picks = [rng.integers(0, len(c), size=count) for c in columns]
        table = np.stack([c[p] for c, p in zip(columns, picks)], axis=1)  # each run's own random replicates
        values = table[np.arange(count)[:, None], drawn]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pooled = np.nanmean(values, axis=1)
    low, high = percentile_bounds(pooled, confidence)
    return mean, sd, float(low[0]), float(high[0])
