"""Bootstrap intervals over test proteins, the outcomes file, paired and seed-pooled comparisons.

Predictions are made from the built-in tasks' real test labels plus seeded noise (no head is fitted), so the
statistics run on real protein counts, lengths and class balances in well under a second each.
"""

from __future__ import annotations

import numpy as np
import pytest

from plmforge.core.errors import PlmforgeError
from plmforge.core.evaluation import prepared_splits
from plmforge.core.registry import Registry
from plmforge.core.uncertainty import (
    Outcomes,
    bootstrap_metrics,
    paired_difference,
    pooled_over_seeds,
    read_outcomes,
    task_outcomes,
    unpaired_difference,
    write_outcomes,
)


def _task(name, **options):
    cls = Registry().load("task", name)
    task = cls(cls.Config(head={"kind": "linear"}, **options))  # no head is fitted here
    data = task.load()
    return task, data, prepared_splits(task, data, 0)["test"]


def _noisy_logits(task, data, split, seed, signal=1.5):
    """Logits that favour the true class by ``signal`` (contacts: the true map), plus seeded noise."""
    rng = np.random.default_rng(seed)
    out = []
    for y in split.labels:
        if task.level == "pair":
            out.append((rng.normal(size=y.shape) + signal * (y == 1)).astype(np.float32))
            continue
        k = task.problem(data).num_outputs
        logits = rng.normal(size=np.shape(y) + (k,))
        true = np.clip(np.asarray(y), 0, k - 1)[..., None]
        np.put_along_axis(logits, true, np.take_along_axis(logits, true, -1) + signal, -1)
        out.append(logits.astype(np.float32))
    return out


@pytest.fixture(scope="module")
def amp():
    return _task("antimicrobial")


def test_interval_contains_the_point_and_narrows_with_more_proteins(amp):
    task, data, test = amp
    predictions = _noisy_logits(task, data, test, 0)
    widths = {}
    for n in (60, 600):
        split = test.subset(range(n))
        out = task_outcomes(task, [predictions[:n]], split, data, resamples=300, seed=0, confidence=0.95)
        assert out.metric_names == ["accuracy", "mcc", "auroc"] and out.replicates.shape == (300, 3)
        np.testing.assert_allclose(out.point, [task.metrics(predictions[:n], split, data)[k]
                                               for k in out.metric_names])
        assert np.all(out.low <= out.point) and np.all(out.point <= out.high)
        widths[n] = out.high - out.low
        assert list(out.protein_ids) == split.ids and out.offsets[-1] == len(out.labels) == n
        assert out.predictions.shape == (1, n, 2) and out.predictions.dtype == np.float16
    assert np.all(widths[600] < widths[60] / 2)  # ~ 1/sqrt(n): 10x the proteins, about a third the width


def test_same_seed_same_replicates_and_head_seeds_are_averaged(amp):
    task, data, test = amp
    split = test.subset(range(80))
    one = _noisy_logits(task, data, split, 1)
    two = _noisy_logits(task, data, split, 2)
    a = task_outcomes(task, [one, two], split, data, resamples=50, seed=3, confidence=0.9)
    b = task_outcomes(task, [one, two], split, data, resamples=50, seed=3, confidence=0.9)
    c = task_outcomes(task, [one, two], split, data, resamples=50, seed=4, confidence=0.9)
    np.testing.assert_array_equal(a.replicates, b.replicates)
    assert not np.array_equal(a.replicates, c.replicates)
    means = [(task.metrics(one, split, data)[k] + task.metrics(two, split, data)[k]) / 2 for k in a.metric_names]
    np.testing.assert_allclose(a.point, means)
    assert a.head_seeds == 2 and a.predictions.shape == (2, 80, 2)
    off = task_outcomes(task, [one], split, data, resamples=0, seed=3, confidence=0.9)  # intervals turned off
    assert off.replicates.shape == (0, 3) and np.isnan(off.low).all() and np.isfinite(off.point).all()


def test_vectorised_parts_give_the_generic_replicates():
    """Localization (confusion matrices) and contacts (per-chain precisions) take the fast path: same numbers."""
    for name, n in (("localization", 150), ("contact", 5)):
        task, data, test = _task(name)
        split = test.subset(range(n))
        predictions = _noisy_logits(task, data, split, 0)
        assert task.metric_parts(predictions, split, data) is not None

        class Generic(type(task)):
            def metrics(self, predictions, split, data):  # an override turns the default parts off
                return super().metrics(predictions, split, data)

        generic = Generic(task.config)
        assert generic.metric_parts(predictions, split, data) is None
        fast = task_outcomes(task, [predictions], split, data, resamples=20, seed=0, confidence=0.95)
        slow = task_outcomes(generic, [predictions], split, data, resamples=20, seed=0, confidence=0.95)
        np.testing.assert_allclose(fast.replicates, slow.replicates, rtol=1e-9, equal_nan=True)
        np.testing.assert_allclose(fast.point, slow.point, rtol=1e-12)
        if name == "contact":
            assert fast.labels is None and fast.predictions is None  # pair level: no per-protein maps kept


def test_auroc_undefined_on_some_resamples_is_left_out(amp):
    task, data, test = amp
    positives = [i for i, y in enumerate(test.labels) if int(y) == 1][:1]
    negatives = [i for i, y in enumerate(test.labels) if int(y) == 0][:7]
    split = test.subset(positives + negatives)  # one positive: a third of the resamples miss it
    out = task_outcomes(task, [_noisy_logits(task, data, split, 0)], split, data, resamples=200, seed=0,
                        confidence=0.95)
    auroc = out.replicates[:, out.column("auroc")]
    assert 0 < np.isnan(auroc).sum() < 200
    assert np.isfinite(out.low[out.column("auroc")]) and np.isfinite(out.high[out.column("auroc")])
    # a metric undefined everywhere has no interval
    low, high, replicates = bootstrap_metrics(lambda idx: np.array([np.nan, idx.size]), 5, 10, 0, 0.95)
    assert np.isnan(low[0]) and np.isnan(high[0]) and low[1] == high[1] == 5 and replicates.shape == (10, 2)


def test_paired_difference_and_the_unpaired_fallback(amp):
    task, data, test = amp
    split = test.subset(range(300))
    good = task_outcomes(task, [_noisy_logits(task, data, split, 0, signal=2.0)], split, data, 400, 0, 0.95)
    # same noise, weaker signal: like two heads, the two get the same proteins right and wrong, mostly
    worse = task_outcomes(task, [_noisy_logits(task, data, split, 0, signal=1.5)], split, data, 400, 0, 0.95)
    assert paired_difference(good, good, "accuracy", 0.95) == (0.0, 0.0, 0.0)
    point, low, high = paired_difference(good, worse, "accuracy", 0.95)
    assert point == pytest.approx(good.interval("accuracy")[0] - worse.interval("accuracy")[0])
    assert low <= point <= high
    unpaired = unpaired_difference(good.interval("accuracy"), worse.interval("accuracy"), 0.95)
    assert unpaired[0] == pytest.approx(point) and unpaired[2] - unpaired[1] > 1.5 * (high - low)  # pairing is sharper
    other_seed = task_outcomes(task, [_noisy_logits(task, data, split, 1)], split, data, 400, 1, 0.95)
    assert paired_difference(good, other_seed, "accuracy", 0.95) is None
    with pytest.raises(KeyError, match="q3"):
        good.column("q3")


def test_pooled_over_seeds(amp):
    task, data, test = amp
    split = test.subset(range(200))
    runs = [task_outcomes(task, [_noisy_logits(task, data, split, s, signal=1.0 + 0.5 * s)], split, data, 300, 0,
                          0.95) for s in range(3)]
    points = [r.interval("mcc")[0] for r in runs]
    mean, sd, low, high = pooled_over_seeds(runs, "mcc", 0.95)
    assert mean == pytest.approx(np.mean(points)) and sd == pytest.approx(np.std(points, ddof=1))
    assert low < mean < high
    widest = max(r.interval("mcc")[2] - r.interval("mcc")[1] for r in runs)
    assert high - low > widest  # the seed spread is in it, not only the proteins
    unaligned = [runs[0], task_outcomes(task, [_noisy_logits(task, data, split, 1, 1.5)], split, data, 300, 9, 0.95)]
    _, _, low2, high2 = pooled_over_seeds(unaligned, "mcc", 0.95)
    assert low2 < high2
    assert np.isnan(pooled_over_seeds(runs[:1], "mcc", 0.95)[1])  # one run: no spread to report


def test_outcomes_file_round_trip_and_refusals(amp, tmp_path):
    task, data, test = amp
    split = test.subset(range(40))
    out = task_outcomes(task, [_noisy_logits(task, data, split, 0)], split, data, 30, 0, 0.95)
    path = tmp_path / "outcomes" / "amp" / "model.npz"
    write_outcomes(path, out)
    back = read_outcomes(path)
    assert isinstance(back, Outcomes) and back.metric_names == out.metric_names
    for name in ("protein_ids", "point", "low", "high", "replicates", "labels", "predictions", "offsets"):
        np.testing.assert_array_equal(getattr(back, name), getattr(out, name))
    assert (back.resamples, back.seed, back.confidence, back.head_seeds) == (30, 0, 0.95, 1)
    assert back.protein_ids.dtype.kind == "U" and not list(tmp_path.rglob("*.tmp"))

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, format_version=1, protein_ids=np.array([{"a": 1}], dtype=object))
    with pytest.raises(PlmforgeError, match="pickled.npz"):
        read_outcomes(pickled)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(PlmforgeError, match="garbage.npz"):
        read_outcomes(garbage)
    old = tmp_path / "old.npz"
    np.savez(old, point=out.point)
    with pytest.raises(PlmforgeError, match="old.npz: layout version None"):
        read_outcomes(old)
