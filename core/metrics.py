"""Evaluation metrics for downstream tasks, in numpy only.

A backend fits a head and hands back raw predictions as numpy arrays (:class:`plmforge.core.heads.HeadResult`);
the task computes its metrics from those here. Keeping this module free of any framework (no torch, JAX or
scikit-learn) means a task's numbers are computed the same way whichever backend produced the predictions.

Conventions: ignored items have label ``-1`` (classification, binary and contact labels; the ``ignore``
argument) or a NaN target (regression). Shapes that do not match raise ``ValueError``. A metric that is
undefined for the data given (nothing left after ignoring, constant input to a correlation) is NaN, except
:func:`matthews_corrcoef` (0.0 by convention) and :func:`auroc` (raises when only one class is present).
"""

from __future__ import annotations

import numpy as np

#: Sequence separations (inclusive) of the contact ranges, as in CASP and TAPE.
CONTACT_RANGES: dict[str, tuple[int, int | None]] = {"medium": (12, 23), "long": (24, None)}
#: Divisors ``k`` of the protein length for precision at ``L/k``.
CONTACT_TOPS: tuple[int, ...] = (1, 2, 5)


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _predictions(logits_or_pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Integer class predictions: argmax of ``[..., C]`` logits, or the given ``[...]`` predictions."""
    values = np.asarray(logits_or_pred)
    labels = np.asarray(labels)
    if values.shape == labels.shape:
        if values.dtype.kind == "f":
            if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
                raise ValueError("predictions with the labels' shape must be integer class indices; "
                                 f"give logits as [..., C] (labels have shape {labels.shape})")
        elif values.dtype.kind not in "iub":
            raise ValueError(f"predictions must be integer class indices, got dtype {values.dtype}")
        return values.astype(np.int64)
    if values.ndim == labels.ndim + 1 and values.shape[:-1] == labels.shape:
        return np.argmax(values, axis=-1).astype(np.int64)
    raise ValueError(f"predictions of shape {values.shape} do not match labels of shape {labels.shape}: "
                     "expected the same shape (class indices) or the labels' shape plus a class axis (logits)")


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes {a.shape} and {b.shape} do not match")


def _kept(labels: np.ndarray, ignore: int | None) -> np.ndarray:
    """Boolean mask of the items not ignored."""
    if ignore is None:
        return np.ones(labels.shape, dtype=bool)
    return labels != ignore


def _binary(values: np.ndarray, what: str) -> np.ndarray:
    if values.size and not np.all((values == 0) | (values == 1)):
        raise ValueError(f"{what} must be 0 or 1 (binary), got values {np.unique(values)[:10].tolist()}")
    return values.astype(np.int64)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-d array; tied values share the average of the ranks they span."""
    values = np.asarray(values).ravel()
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each group of equal values
    return (last - (counts - 1) / 2.0)[inverse.ravel()]


def _nanmean(values: list[float]) -> float:
    """Mean of the non-NaN values; NaN (without a warning) when there are none."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


# ----------------------------------------------------------------------------------------------------------
# Classification


def accuracy(logits_or_pred: np.ndarray, labels: np.ndarray, ignore: int | None = -1) -> float:
    """Fraction of non-ignored items predicted right (Q3/Q8 over residues, or per-protein accuracy).

    ``logits_or_pred``: ``[..., C]`` logits (argmax is taken) or ``[...]`` integer predictions, where
    ``labels`` is ``[...]``. NaN when every item is ignored.
    """
    labels = np.asarray(labels)
    pred = _predictions(logits_or_pred, labels)
    kept = _kept(labels, ignore)
    if not kept.any():
        return float("nan")
    return float(np.mean(pred[kept] == labels[kept]))


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int, ignore: int | None = -1) -> np.ndarray:
    """Counts ``[C, C]`` (int64): row = true class, column = predicted class; ignored items left out.

    ``pred`` may be integer predictions or logits with a trailing class axis, like :func:`accuracy`.
    """
    labels = np.asarray(labels)
    pred = _predictions(pred, labels)
    kept = _kept(labels, ignore)
    true, guess = labels[kept].astype(np.int64), pred[kept]
    for name, values in (("labels", true), ("predictions", guess)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}) apart from ignored items, "
                             f"got range [{values.min()}, {values.max()}]")
    flat = np.bincount(true * num_classes + guess, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def macro_f1(pred: np.ndarray, labels: np.ndarray, num_classes: int, ignore: int | None = -1) -> float:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN).

    Only classes that occur in the (non-ignored) labels or predictions are averaged: a class with no
    TP, FP or FN has an undefined F1 and is skipped rather than counted as 0 or 1, so declaring extra
    classes that a split never uses does not change the score (scikit-learn's default when ``labels`` is
    not given). NaN when every item is ignored.
    """
    matrix = confusion_matrix(pred, labels, num_classes, ignore)
    tp = np.diag(matrix).astype(np.float64)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    present = denominator > 0
    if not present.any():
        return float("nan")
    return float(np.mean(2 * tp[present] / denominator[present]))


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int,
                           ignore: int | None = -1) -> dict[str, float]:
    """``accuracy`` and ``macro_f1`` of ``[..., C]`` logits (or integer predictions) against ``[...]`` labels."""
    labels = np.asarray(labels)
    pred = _predictions(logits, labels)
    return {"accuracy": accuracy(pred, labels, ignore), "macro_f1": macro_f1(pred, labels, num_classes, ignore)}


# ----------------------------------------------------------------------------------------------------------
# Binary


def matthews_corrcoef(pred: np.ndarray, labels: np.ndarray, ignore: int | None = -1) -> float:
    """Matthews correlation of binary predictions (0/1) with binary labels; 0.0 when undefined.

    MCC = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)); undefined (a zero factor: one class
    only in the labels or the predictions, or no items) gives 0.0, as in scikit-learn.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    _same_shape(pred, labels, "matthews_corrcoef(pred, labels)")
    kept = _kept(labels, ignore)
    p = _binary(pred[kept], "predictions")
    t = _binary(labels[kept], "labels")
    tp = float(np.sum((p == 1) & (t == 1)))
    tn = float(np.sum((p == 0) & (t == 0)))
    fp = float(np.sum((p == 1) & (t == 0)))
    fn = float(np.sum((p == 0) & (t == 1)))
    denominator = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    if denominator == 0:
        return 0.0
    return float((tp * tn - fp * fn) / np.sqrt(denominator))


def auroc(scores: np.ndarray, labels: np.ndarray, ignore: int | None = -1) -> float:
    """Area under the ROC curve of ``scores`` (higher = class 1) for binary labels.

    Mann–Whitney form: the probability that a random positive outscores a random negative, ties
    counting one half (tied scores get the average rank). Raises ``ValueError`` unless both classes are
    present among the non-ignored labels, since the area is undefined then.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    _same_shape(scores, labels, "auroc(scores, labels)")
    kept = _kept(labels, ignore)
    s, t = scores[kept], _binary(labels[kept], "labels")
    positives = int(t.sum())
    negatives = int(t.size - positives)
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUROC is undefined with only one class present ({positives} positive, "
                         f"{negatives} negative labels after ignoring)")
    if np.isnan(s).any():
        return float("nan")
    ranks = _average_ranks(s)
    u = ranks[t == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def _positive_scores(logits_or_scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Scores for class 1: the softmax probability of ``[..., 2]`` logits, or ``[...]`` logits as given."""
    values = np.asarray(logits_or_scores, dtype=np.float64)
    if values.shape == labels.shape:
        return values
    if values.shape == labels.shape + (2,):
        return 1.0 / (1.0 + np.exp(values[..., 0] - values[..., 1]))  # softmax(logits)[..., 1]
    raise ValueError(f"binary scores of shape {values.shape} do not match labels of shape {labels.shape}: "
                     "expected [...] logits of class 1 or [..., 2] logits")


def binary_metrics(logits_or_scores: np.ndarray, labels: np.ndarray, ignore: int | None = -1) -> dict[str, float]:
    """``accuracy``, ``mcc`` and ``auroc`` of binary predictions.

    ``logits_or_scores``: ``[..., 2]`` logits (scored by the softmax probability of class 1, predicted
    class 1 when that probability exceeds 0.5) or ``[...]`` logits of class 1 (predicted class 1 when
    positive). ``auroc`` is NaN here, not an error, when only one class is present.
    """
    labels = np.asarray(labels)
    values = np.asarray(logits_or_scores, dtype=np.float64)
    scores = _positive_scores(values, labels)
    if values.shape == labels.shape:
        pred = (values > 0).astype(np.int64)
    else:
        pred = (values[..., 1] > values[..., 0]).astype(np.int64)
    both_classes = np.unique(labels[_kept(labels, ignore)]).size > 1
    area = auroc(scores, labels, ignore) if both_classes else float("nan")
    return {"accuracy": accuracy(pred, labels, ignore), "mcc": matthews_corrcoef(pred, labels, ignore),
            "auroc": area}


# ----------------------------------------------------------------------------------------------------------
# Regression


def _regression_pairs(pred: np.ndarray, target: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    _same_shape(pred, target, what)
    kept = ~np.isnan(target)
    return pred[kept].ravel(), target[kept].ravel()


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    if denominator == 0:
        return float("nan")  # a constant input: the correlation is undefined
    return float(np.clip(np.sum(dx * dy) / denominator, -1.0, 1.0))


def pearson(pred: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation over items whose target is not NaN; NaN if fewer than 2 or one side is constant."""
    x, y = _regression_pairs(pred, target, "pearson(pred, target)")
    return _pearson(x, y)


def spearman(pred: np.ndarray, target: np.ndarray) -> float:
    """Spearman rank correlation: Pearson of the average ranks (ties share a rank); NaN targets dropped.

    NaN if fewer than 2 items remain, if either side is constant, or if a kept prediction is not finite.
    """
    x, y = _regression_pairs(pred, target, "spearman(pred, target)")
    if x.size < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    return _pearson(_average_ranks(x), _average_ranks(y))


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``spearman``, ``pearson`` and ``mse`` (mean squared error) over items whose target is not NaN."""
    x, y = _regression_pairs(pred, target, "regression_metrics(pred, target)")
    mse = float(np.mean((x - y) ** 2)) if x.size else float("nan")
    return {"spearman": spearman(pred, target), "pearson": pearson(pred, target), "mse": mse}


# ----------------------------------------------------------------------------------------------------------
# Contacts


def contact_precision(logits: np.ndarray, labels: np.ndarray, min_sep: int, max_sep: int | None, top: int) -> float:
    """Precision of the ``top`` highest-scoring residue pairs in a separation range.

    Candidates are the pairs ``i < j`` (only the upper triangle is read: symmetrise non-symmetric
    logits first) with ``min_sep <= j - i <= max_sep`` (``max_sep=None``: no upper bound) and a label
    other than ``-1``. The ``top`` best-scoring candidates are taken (ties in score broken by position,
    row-major); the precision is the fraction of them that are contacts (label 1). With fewer candidates
    than ``top`` all are taken and the division is by their number; with none the result is NaN.
    ``logits`` may equally be probabilities: only their order matters.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"contact logits must be a square [L, L] array, got shape {logits.shape}")
    _same_shape(logits, labels, "contact_precision(logits, labels)")
    if min_sep < 1:
        raise ValueError(f"min_sep must be at least 1 (pairs i < j), got {min_sep}")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    rows, cols = np.triu_indices(logits.shape[0], k=min_sep)
    keep = labels[rows, cols] != -1
    if max_sep is not None:
        keep &= (cols - rows) <= max_sep
    rows, cols = rows[keep], cols[keep]
    if rows.size == 0:
        return float("nan")
    order = np.argsort(-logits[rows, cols].astype(np.float64), kind="stable")[:top]
    return float(np.mean(labels[rows[order], cols[order]] == 1))


def contact_metrics(list_of_logits: list[np.ndarray], list_of_labels: list[np.ndarray]) -> dict[str, float]:
    """Long- and medium-range precision at L, L/2 and L/5, averaged over proteins.

    Keys ``long_P_L``, ``long_P_L2``, ``long_P_L5`` (precision of the top L, L/2, L/5 pairs with
    ``|i − j| >= 24``) and ``medium_P_L``, ``medium_P_L2``, ``medium_P_L5`` (``12 <= |i − j| <= 23``),
    where ``L`` is each protein's length and the number of pairs taken is ``max(1, L // k)``. A protein
    with no candidate pair in a range (too short, or all ignored) is left out of that range's mean; NaN
    if no protein has any.
    """
    if len(list_of_logits) != len(list_of_labels):
        raise ValueError(f"{len(list_of_logits)} contact maps of logits but {len(list_of_labels)} of labels")
    per_key: dict[str, list[float]] = {}
    for logits, labels in zip(list_of_logits, list_of_labels):
        length = np.asarray(labels).shape[0]
        for name, (low, high) in CONTACT_RANGES.items():
            for k in CONTACT_TOPS:
                key = f"{name}_P_L" if k == 1 else f"{name}_P_L{k}"
                value = contact_precision(logits, labels, low, high, max(1, length // k))
                per_key.setdefault(key, []).append(value)
    keys = [f"{name}_P_L" if k == 1 else f"{name}_P_L{k}" for name in ("long", "medium") for k in CONTACT_TOPS]
    return {key: _nanmean(per_key.get(key, [])) for key in keys}
