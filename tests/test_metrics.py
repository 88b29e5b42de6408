"""Metrics (core/metrics.py) against hand-computed values and scikit-learn/scipy; figures write valid PNGs."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from plmforge.core import metrics
from plmforge.core.metrics import (
    accuracy,
    auroc,
    binary_metrics,
    classification_metrics,
    confusion_matrix,
    contact_metrics,
    contact_precision,
    macro_f1,
    matthews_corrcoef,
    pearson,
    regression_metrics,
    spearman,
)

# ----------------------------------------------------------------------------------------------------------
# Classification: a 3-class example, the last item ignored
#   (true, pred): (0,0) (0,0) (0,1) (1,1) (1,2) (2,2) (2,2) (2,0) (2,2)  + (-1, 1) ignored
#   confusion (rows true): [[2,1,0], [0,1,1], [1,0,3]]
#   class 0: TP 2, FP 1, FN 1 -> F1 = 4/6 = 2/3
#   class 1: TP 1, FP 1, FN 1 -> F1 = 2/4 = 1/2
#   class 2: TP 3, FP 1, FN 1 -> F1 = 6/8 = 3/4
#   macro F1 = (2/3 + 1/2 + 3/4) / 3 = 23/36; accuracy = 6/9 = 2/3

LABELS3 = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, -1])
PRED3 = np.array([0, 0, 1, 1, 2, 2, 2, 0, 2, 1])


def _one_hot_logits(pred: np.ndarray, classes: int) -> np.ndarray:
    logits = np.full((pred.size, classes), -1.0)
    logits[np.arange(pred.size), pred] = 2.0
    return logits


def test_confusion_matrix_by_hand():
    matrix = confusion_matrix(PRED3, LABELS3, 3)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 1, 1], [1, 0, 3]])
    # Logits are accepted too (argmax); ignore=None keeps the -1 item, which is then out of range.
    np.testing.assert_array_equal(confusion_matrix(_one_hot_logits(PRED3, 3), LABELS3, 3), matrix)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        confusion_matrix(PRED3, LABELS3, 3, ignore=None)
    with pytest.raises(ValueError, match="predictions must lie"):
        confusion_matrix(np.where(PRED3 == 2, 5, PRED3), LABELS3, 3)


def test_accuracy_and_macro_f1_by_hand():
    assert accuracy(PRED3, LABELS3) == pytest.approx(2 / 3)
    assert accuracy(_one_hot_logits(PRED3, 3), LABELS3) == pytest.approx(2 / 3)
    assert macro_f1(PRED3, LABELS3, 3) == pytest.approx(23 / 36)
    # A declared class that occurs nowhere (class 3) is skipped, not averaged in as 0.
    assert macro_f1(PRED3, LABELS3, 4) == pytest.approx(23 / 36)
    # A class only predicted (never true) counts: its F1 is 0. Change pred of item 0 to class 3:
    #   class 0: TP 1, FP 1, FN 2 -> 2/5; class 1: 1/2; class 2: 3/4; class 3: TP 0, FP 1 -> 0
    pred = PRED3.copy()
    pred[0] = 3
    assert macro_f1(pred, LABELS3, 4) == pytest.approx((2 / 5 + 1 / 2 + 3 / 4 + 0) / 4)
    assert classification_metrics(_one_hot_logits(PRED3, 3), LABELS3, 3) == {
        "accuracy": pytest.approx(2 / 3), "macro_f1": pytest.approx(23 / 36)}


def test_accuracy_over_residues_with_a_batch_axis():
    # Q3 over residues: logits [B, L, C], labels [B, L] with padding -1; 3 of 4 labelled residues right.
    labels = np.array([[0, 1, 2, -1], [2, -1, -1, -1]])
    pred = np.array([[0, 1, 1, 0], [2, 0, 0, 0]])
    logits = np.eye(3)[pred]
    assert accuracy(logits, labels) == pytest.approx(3 / 4)
    assert math.isnan(accuracy(pred, np.full_like(labels, -1)))


def test_classification_shape_errors():
    with pytest.raises(ValueError, match="do not match labels"):
        accuracy(np.zeros((4, 3)), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="do not match labels"):
        macro_f1(np.zeros(4, dtype=int), np.zeros(5, dtype=int), 3)
    with pytest.raises(ValueError, match="integer class indices"):
        accuracy(np.array([0.2, 0.7]), np.array([0, 1]))
    # Integral floats are fine as predictions.
    assert accuracy(np.array([0.0, 1.0]), np.array([0, 1])) == 1.0


# ----------------------------------------------------------------------------------------------------------
# Binary


def test_mcc_by_hand():
    # TP 3, TN 4, FP 1, FN 2 (+ one ignored):
    #   MCC = (3·4 − 1·2) / sqrt((3+1)(3+2)(4+1)(4+2)) = 10 / sqrt(600) = 1/sqrt(6) ≈ 0.408248
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 1, -1])
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1])
    assert matthews_corrcoef(pred, labels) == pytest.approx(1 / math.sqrt(6))
    assert matthews_corrcoef(labels[:-1], labels[:-1]) == pytest.approx(1.0)
    assert matthews_corrcoef(1 - labels[:-1], labels[:-1]) == pytest.approx(-1.0)
    # Undefined (all predictions one class) -> 0.0
    assert matthews_corrcoef(np.ones(4, dtype=int), np.array([0, 1, 0, 1])) == 0.0
    with pytest.raises(ValueError, match="do not match"):
        matthews_corrcoef(pred[:-1], labels)
    with pytest.raises(ValueError, match="binary"):
        matthews_corrcoef(np.array([0, 2]), np.array([0, 1]))


def test_auroc_by_hand_with_ties():
    # Positives 0.4, 0.8; negatives 0.1, 0.4. Pairs (pos > neg): 0.4>0.1 = 1, 0.4~0.4 = 1/2, 0.8>0.1 = 1,
    # 0.8>0.4 = 1 -> 3.5 / 4 = 0.875. Rank form: ranks 1, 2.5, 2.5, 4; U = (2.5 + 4) − 2·3/2 = 3.5.
    assert auroc(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.875)
    # Ignored items do not count, whatever their score.
    assert auroc(np.array([0.1, 0.4, 0.4, 0.8, 0.0, 9.0]), np.array([0, 0, 1, 1, -1, -1])) == pytest.approx(0.875)
    assert auroc(np.array([3.0, 2.0, 1.0]), np.array([1, 0, 0])) == 1.0
    assert auroc(np.array([1.0, 1.0, 1.0]), np.array([1, 0, 0])) == 0.5
    with pytest.raises(ValueError, match="only one class"):
        auroc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="do not match"):
        auroc(np.array([0.1, 0.2]), np.array([1, 0, 1]))


def test_binary_metrics_from_logits():
    labels = np.array([0, 0, 1, 1, -1])
    # [N] logits of class 1: predicted 1 when > 0. Predictions 0, 1, 1, 1 -> accuracy 3/4;
    # TP 2, TN 1, FP 1, FN 0 -> MCC = (2 − 0)/sqrt(3·2·1·2) = 2/sqrt(12); AUROC: order −2 < 0.5 < 1 < 3, 1.
    scores = np.array([-2.0, 0.5, 1.0, 3.0, 7.0])
    result = binary_metrics(scores, labels)
    assert result == {"accuracy": pytest.approx(3 / 4), "mcc": pytest.approx(2 / math.sqrt(12)),
                      "auroc": pytest.approx(1.0)}
    # [N, 2] logits with the same class-1 margin give the same numbers.
    two = np.stack([np.zeros_like(scores) + 1.0, scores + 1.0], axis=1)
    assert binary_metrics(two, labels) == result
    # One class only: AUROC is NaN here instead of an error.
    assert math.isnan(binary_metrics(np.array([0.3, -0.2]), np.array([1, 1]))["auroc"])
    with pytest.raises(ValueError, match="binary scores"):
        binary_metrics(np.zeros((4, 3)), labels[:4])


# ----------------------------------------------------------------------------------------------------------
# Regression


def test_spearman_with_ties_by_hand():
    # pred ranks [1, 2.5, 2.5, 4], target ranks [1, 3, 2, 4] (the NaN target is dropped).
    # Deviations from 2.5: [-1.5, 0, 0, 1.5] and [-1.5, .5, -.5, 1.5]; Σxy = 4.5, Σx² = 4.5, Σy² = 5
    # rho = 4.5 / sqrt(4.5·5) = sqrt(0.9) ≈ 0.948683
    pred = np.array([1.0, 2.0, 2.0, 3.0, 100.0])
    target = np.array([1.0, 3.0, 2.0, 4.0, np.nan])
    assert spearman(pred, target) == pytest.approx(math.sqrt(0.9))
    assert math.isnan(spearman(np.ones(3), np.array([1.0, 2.0, 3.0])))  # constant prediction
    assert math.isnan(spearman(np.array([1.0]), np.array([2.0])))
    with pytest.raises(ValueError, match="do not match"):
        spearman(pred[:3], target)


def test_pearson_and_mse_by_hand():
    # pred [1,2,3], target [2,4,7]: dx [-1,0,1], dy [-7/3,-1/3,8/3]; Σxy = 5, Σx² = 2, Σy² = 114/9
    # r = 5 / sqrt(2·114/9) = 15/sqrt(228) ≈ 0.993399; mse = (1 + 4 + 16)/3 = 7
    pred = np.array([1.0, 2.0, 3.0, 5.0])
    target = np.array([2.0, 4.0, 7.0, np.nan])
    assert pearson(pred, target) == pytest.approx(15 / math.sqrt(228))
    result = regression_metrics(pred, target)
    assert result == {"spearman": pytest.approx(1.0), "pearson": pytest.approx(15 / math.sqrt(228)),
                      "mse": pytest.approx(7.0)}
    assert math.isnan(regression_metrics(np.zeros(2), np.full(2, np.nan))["mse"])
    with pytest.raises(ValueError, match="do not match"):
        regression_metrics(np.zeros((3, 1)), np.zeros(3))


def test_average_ranks():
    np.testing.assert_array_equal(metrics._average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4, 1, 4, 2, 4])


# ----------------------------------------------------------------------------------------------------------
# Contacts: a 30x30 map (L = 30 -> top 30, 15, 6)
#
# Long range (j − i >= 24) has 21 pairs: (0,24..29) (1,25..29) (2,26..29) (3,27..29) (4,28..29) (5,29).
#   (0,24) ignored (-1) though scored highest (100);
#   scores 10..5: (0,29) C, (1,29) -, (2,29) C, (3,29) -, (4,29) C, (5,29) -   -> P@L/5 = 3/6
#   score 4: (0,25) C (rank 7); all others get low default scores ordered row-major:
#   (0,26) (0,27) (0,28) (1,25) (1,26) (1,27) (1,28) (2,26) | (2,27) (2,28) (3,27) (3,28) C (4,28)
#   top 15 = 7 scored + 8 defaults -> contacts 4 -> P@L/2 = 4/15
#   20 candidates (one ignored) < 30 -> all taken: 5 contacts -> P@L = 5/20
# Medium range (12 <= j − i <= 23) has 150 pairs.
#   scores: (0,23) 50 C, (0,12) 20 C, (5,20) 19 -, (2,16) 18 C, (3,18) 17 -, (4,17) 16 -   -> P@L/5 = 3/6
#   (6,26) 15 C (rank 7); defaults row-major: (0,13..22) 10 pairs, (1,13..24) 12 pairs, (2,14), ...
#   top 15 = 7 scored + (0,13..20): contacts 4 -> P@L/2 = 4/15
#   top 30 = 7 scored + 10 + 12 + (2,14): (1,20) C is in, (10,25) C is not -> P@L = 5/30
# Decoys: a short-range contact (0,5) scored 99 and the whole lower triangle scored 1000 (only i < j is read).


def _contact_example() -> tuple[np.ndarray, np.ndarray]:
    length = 30
    rows, cols = np.indices((length, length))
    logits = -1.0 - 0.001 * (rows * length + cols)  # distinct, decreasing row-major
    labels = np.zeros((length, length), dtype=np.int8)
    scored = {(0, 24): 100, (0, 29): 10, (1, 29): 9, (2, 29): 8, (3, 29): 7, (4, 29): 6, (5, 29): 5, (0, 25): 4,
              (0, 23): 50, (0, 12): 20, (5, 20): 19, (2, 16): 18, (3, 18): 17, (4, 17): 16, (6, 26): 15, (0, 5): 99}
    for (i, j), score in scored.items():
        logits[i, j] = score
    contacts = [(0, 29), (2, 29), (4, 29), (0, 25), (3, 28), (0, 23), (0, 12), (2, 16), (6, 26), (1, 20), (10, 25),
                (0, 5)]
    for i, j in contacts:
        labels[i, j] = labels[j, i] = 1
    labels[0, 24] = labels[24, 0] = -1
    logits[np.tril_indices(length, -1)] = 1000.0
    return logits, labels


def test_contact_precision_by_hand():
    logits, labels = _contact_example()
    assert contact_precision(logits, labels, 24, None, 6) == pytest.approx(3 / 6)
    assert contact_precision(logits, labels, 24, None, 15) == pytest.approx(4 / 15)
    assert contact_precision(logits, labels, 24, None, 30) == pytest.approx(5 / 20)  # only 20 candidates
    assert contact_precision(logits, labels, 12, 23, 6) == pytest.approx(3 / 6)
    assert contact_precision(logits, labels, 12, 23, 15) == pytest.approx(4 / 15)
    assert contact_precision(logits, labels, 12, 23, 30) == pytest.approx(5 / 30)
    # P@1 takes (0,29), a contact, not the ignored (0,24) scored 100; labelled 0 instead, (0,24) comes first.
    assert contact_precision(logits, labels, 24, None, 1) == 1.0
    unignored = labels.copy()
    unignored[0, 24] = 0
    assert contact_precision(logits, unignored, 24, None, 1) == 0.0
    # max_sep is inclusive: only separation 23 -> (0,23) (score 50, contact) first.
    assert contact_precision(logits, labels, 23, 23, 1) == 1.0
    # Probabilities rank the same as logits.
    assert contact_precision(1 / (1 + np.exp(-logits / 100)), labels, 12, 23, 15) == pytest.approx(4 / 15)


def test_contact_precision_edge_cases():
    logits, labels = _contact_example()
    assert math.isnan(contact_precision(logits[:10, :10], labels[:10, :10], 24, None, 2))  # no candidates
    assert math.isnan(contact_precision(logits, np.full_like(labels, -1), 24, None, 2))  # all ignored
    with pytest.raises(ValueError, match="do not match"):
        contact_precision(logits, labels[:29, :29], 24, None, 2)
    with pytest.raises(ValueError, match="square"):
        contact_precision(logits[:, :29], labels[:, :29], 24, None, 2)
    with pytest.raises(ValueError, match="top"):
        contact_precision(logits, labels, 24, None, 0)


def test_contact_metrics_averages_over_proteins():
    logits, labels = _contact_example()
    expected = {"long_P_L": 5 / 20, "long_P_L2": 4 / 15, "long_P_L5": 3 / 6,
                "medium_P_L": 5 / 30, "medium_P_L2": 4 / 15, "medium_P_L5": 3 / 6}
    one = contact_metrics([logits], [labels])
    assert list(one) == list(expected)
    assert one == pytest.approx(expected)
    # A second protein with no contacts halves every value; a 10-residue one (no pair at these ranges, NaN)
    # is left out of the mean.
    short_logits, short_labels = logits[:10, :10], labels[:10, :10]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both = contact_metrics([logits, logits, short_logits], [labels, np.zeros_like(labels), short_labels])
        assert both == pytest.approx({key: value / 2 for key, value in expected.items()})
        nothing = contact_metrics([short_logits], [short_labels])
    assert all(math.isnan(value) for value in nothing.values())
    with pytest.raises(ValueError, match="2 contact maps"):
        contact_metrics([logits, logits], [labels])


# ----------------------------------------------------------------------------------------------------------
# Cross-checks against scikit-learn and scipy on random data


def test_against_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(0, 5, size=200)
        pred = np.where(rng.random(200) < 0.5, labels, rng.integers(0, 5, size=200))
        labels_ignored = np.where(rng.random(200) < 0.1, -1, labels)
        kept = labels_ignored != -1
        assert accuracy(pred, labels_ignored) == pytest.approx(sk.accuracy_score(labels[kept], pred[kept]))
        np.testing.assert_array_equal(confusion_matrix(pred, labels_ignored, 6),
                                      sk.confusion_matrix(labels[kept], pred[kept], labels=range(6)))
        assert macro_f1(pred, labels_ignored, 6) == pytest.approx(
            sk.f1_score(labels[kept], pred[kept], average="macro"))

        binary = rng.integers(0, 2, size=300)
        scores = np.round(rng.normal(size=300) + binary, 1)  # rounding makes ties
        binary_pred = (scores > 0.5).astype(int)
        assert matthews_corrcoef(binary_pred, binary) == pytest.approx(sk.matthews_corrcoef(binary, binary_pred))
        assert auroc(scores, binary) == pytest.approx(sk.roc_auc_score(binary, scores))


def test_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for _ in range(5):
        target = np.round(rng.normal(size=100), 1)
        pred = np.round(target + rng.normal(size=100), 1)
        target_nan = np.where(rng.random(100) < 0.1, np.nan, target)
        kept = ~np.isnan(target_nan)
        np.testing.assert_allclose(metrics._average_ranks(pred), stats.rankdata(pred))
        assert spearman(pred, target_nan) == pytest.approx(stats.spearmanr(pred[kept], target[kept])[0])
        assert pearson(pred, target_nan) == pytest.approx(stats.pearsonr(pred[kept], target[kept])[0])


# ----------------------------------------------------------------------------------------------------------
# Figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> None:
    image = pytest.importorskip("matplotlib.image")
    plt = pytest.importorskip("matplotlib.pyplot")
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0
    assert plt.get_fignums() == []


def test_confusion_matrix_png(tmp_path: Path):
    pytest.importorskip("matplotlib")
    from plmforge.core.figures import confusion_matrix_png

    rng = np.random.default_rng(0)
    names = [f"compartment number {i} (long name)" for i in range(13)]
    matrix = rng.integers(0, 500, size=(13, 13))
    matrix[3] = 0  # a class with no true items: row normalisation must not divide by zero
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = confusion_matrix_png(matrix, names, tmp_path / "figs" / "confusion.png", "Localization (test)")
    assert path == tmp_path / "figs" / "confusion.png"
    _check_png(path)
    with pytest.raises(ValueError, match="class names"):
        confusion_matrix_png(matrix, names[:3], tmp_path / "bad.png", "bad")


def test_contact_map_png(tmp_path: Path):
    pytest.importorskip("matplotlib")
    from plmforge.core.figures import contact_map_png

    logits, labels = _contact_example()
    probabilities = 1 / (1 + np.exp(-np.clip(logits, -30, 30)))
    path = contact_map_png(probabilities, labels, str(tmp_path / "contacts.png"), "Contacts (test)")
    assert isinstance(path, Path)
    _check_png(path)


def test_regression_scatter_png(tmp_path: Path):
    pytest.importorskip("matplotlib")
    from plmforge.core.figures import regression_scatter_png

    rng = np.random.default_rng(0)
    target = rng.normal(size=50)
    target[3] = np.nan
    pred = target + rng.normal(size=50)
    path = regression_scatter_png(pred, target, tmp_path / "scatter.png", "Stability (test)")
    _check_png(path)


def test_figures_leave_pyplot_alone(tmp_path: Path):
    # In a fresh interpreter: drawing must not import pyplot, which would select a process-wide backend.
    pytest.importorskip("matplotlib")
    code = (
        "import sys, numpy as np, matplotlib\n"
        "from plmforge.core.figures import regression_scatter_png\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        f"regression_scatter_png(np.arange(5.0), np.arange(5.0), {str(tmp_path / 'x.png')!r}, 't')\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "x.png").read_bytes()[:8] == PNG_SIGNATURE
