"""Several objectives in one run: 'sum' and 'sample' mixing, per-objective metrics, resume with sampling."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import StopAt, tiny_spec_dict

from plmforge.core import checkpoint
from plmforge.core.run import ObjectiveMixer, train
from plmforge.core.spec import validate_spec

pytestmark = pytest.mark.slow


def two_objectives(tmp_path, mixing: str, **training):
    raw = tiny_spec_dict(tmp_path, objective_mixing=mixing, **training)
    raw["objectives"] = [{"name": "mlm", "prefix": "[NLU]", "weight": 3.0},
                         {"name": "completion", "weight": 1.0, "max_target_length": 24}]
    raw["tracking"]["enabled"] = False
    return raw


def test_sampler_draws_in_proportion_to_weights_and_reproducibly():
    mixer = ObjectiveMixer("sample", {"nlu": 3.0, "s2s": 1.0}, seed=5)
    draws = [mixer.labels_for(step)[0] for step in range(4000)]
    assert abs(draws.count("nlu") / 4000 - 0.75) < 0.03
    assert draws == [ObjectiveMixer("sample", {"nlu": 3.0, "s2s": 1.0}, seed=5).labels_for(s)[0] for s in range(4000)]
    assert draws != [ObjectiveMixer("sample", {"nlu": 3.0, "s2s": 1.0}, seed=6).labels_for(s)[0] for s in range(4000)]
    assert mixer.loss_weights(["s2s"]) == {"s2s": 1.0}
    assert mixer.expected_weights() == {"nlu": 0.75, "s2s": 0.25}
    summed = ObjectiveMixer("sum", {"nlu": 3.0, "s2s": 1.0}, seed=5)
    assert summed.labels_for(7) == ["nlu", "s2s"] and summed.loss_weights(["nlu", "s2s"]) == {"nlu": 3.0, "s2s": 1.0}


def test_sum_mixing_logs_each_objective_and_the_weighted_total(tmp_path):
    result = train(validate_spec(two_objectives(tmp_path, "sum", steps=4, eval_every=4)), show_progress=False)
    for _, metrics in result.history:
        assert metrics["train/loss"] == pytest.approx(
            3.0 * metrics["train/mlm/loss"] + metrics["train/completion/loss"], rel=1e-4)
        assert "train/mlm/sampled" not in metrics
    val = result.eval_metrics
    assert val["val/loss"] == pytest.approx(3.0 * val["val/mlm/loss"] + val["val/completion/loss"], rel=1e-6)
    assert "val/completion/next_residue_accuracy" in val and "val/mlm/masked_residue_accuracy" in val


def test_sample_mixing_trains_one_objective_per_step(tmp_path):
    raw = two_objectives(tmp_path, "sample", steps=12, eval_every=12)
    result = train(validate_spec(raw), show_progress=False)
    mixer = ObjectiveMixer("sample", {"mlm": 3.0, "completion": 1.0}, seed=raw["seed"])
    for step, metrics in result.history:
        (label,) = mixer.labels_for(step - 1)
        other = "completion" if label == "mlm" else "mlm"
        assert metrics[f"train/{label}/sampled"] == 1.0 and metrics[f"train/{other}/sampled"] == 0.0
        assert f"train/{other}/loss" not in metrics  # nothing of the other objective this step
        assert metrics["train/loss"] == pytest.approx(metrics[f"train/{label}/loss"], rel=1e-5)
    val = result.eval_metrics  # evaluation always covers every objective
    assert val["val/loss"] == pytest.approx(0.75 * val["val/mlm/loss"] + 0.25 * val["val/completion/loss"], rel=1e-6)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_resume_with_sampling_draws_the_same_objectives(tmp_path, backend):
    raw = two_objectives(tmp_path, "sample", steps=8, eval_every=100, checkpoint_every=100)
    raw["backend"] = {"name": backend}
    straight = train(validate_spec({**raw, "output_dir": str(tmp_path / "a")}), show_progress=False)
    stopped = {**raw, "output_dir": str(tmp_path / "b")}
    with pytest.raises(KeyboardInterrupt):
        train(validate_spec(stopped), hooks=[StopAt(3)], show_progress=False)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "b")] == ["step-000003"]
    resumed = train(validate_spec(stopped), resume=True, show_progress=False)
    expected = dict(straight.history)
    for step, metrics in resumed.history:
        for key, value in metrics.items():
            if key.endswith(("/loss", "/sampled")):
                assert value == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (step, key)
    assert np.isfinite(resumed.train_metrics["train/loss"])
