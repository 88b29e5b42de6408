"""What a run says when it goes wrong: a diverged loss, a plugin objective that raises, a full disk,
a checkpoint write cut short, a tracking server that failed. One clear message, the last good
checkpoint kept, a non-zero exit without traceback (``--debug`` shows it)."""

from __future__ import annotations

import errno
import math
import os

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from helpers import tiny_spec_dict

from plmforge.core import checkpoint
from plmforge.core.cli import main
from plmforge.core.errors import CheckpointError, ObjectiveFailed, TrainingDiverged
from plmforge.core.run import MetricWindow, train
from plmforge.core.run_failures import is_disk_full

FAULTY_OBJECTIVES = """
from plmforge.core.objective import LossOutput
from plmforge.plugins.objectives.mlm import MaskedLanguageModeling


class LossBoom(MaskedLanguageModeling):
    def loss(self, outputs, batch, xp):
        raise ValueError("loss exploded on purpose")


class ExampleBoom(MaskedLanguageModeling):
    def make_example(self, protein, rng):
        raise KeyError("no such feature")


class NanFromThirdStep(MaskedLanguageModeling):
    '''A loss that turns NaN from its third call on (torch calls it once per training step here).'''

    calls = 0

    def loss(self, outputs, batch, xp):
        self.calls += 1
        out = super().loss(outputs, batch, xp)
        return LossOutput(loss=out.loss * float("nan"), metrics=out.metrics) if self.calls >= 3 else out
"""


@pytest.fixture
def faulty(fake_distribution):
    """A third-party distribution ``faulty-objectives`` 2.0 with objectives that fail on purpose."""
    fake_distribution("faulty-objectives", {"plmforge.objectives": {
        "lossboom": "faulty_objectives:LossBoom", "exampleboom": "faulty_objectives:ExampleBoom",
        "nanfromthird": "faulty_objectives:NanFromThirdStep"}}, {"faulty_objectives": FAULTY_OBJECTIVES},
        version="2.0")


def _spec_dict(tmp_path, objective: str | None = None, **training):
    raw = tiny_spec_dict(tmp_path, **{"eval_every": 100, **training})
    if objective is not None:
        raw["objectives"] = [{"name": objective, "label": "boom", "probabilities": [0.15]}]
    raw["tracking"]["enabled"] = False
    return raw


def _status_of_only_run(uri: str) -> str:
    import mlflow

    runs = mlflow.search_runs(experiment_names=["tests"], output_format="list", **_at(uri))
    assert len(runs) == 1
    return runs[0].info.status


def _at(uri: str) -> dict:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return {}


# -- divergence ---------------------------------------------------------------------------------------
def test_metric_window_names_the_first_non_finite_step():
    window = MetricWindow()
    window.add_step(1, {"loss": (1.0, 1.0), "grad_norm": (2.0, 1.0), "mlm/loss": (3.0, 4.0), "mlm/acc": (1.0, 2.0)})
    assert window.first_non_finite() is None
    window.add_step(2, {"loss": (1.0, 1.0), "grad_norm": (math.inf, 1.0), "mlm/loss": (3.0, 4.0)})
    window.add_step(3, {"loss": (math.nan, 1.0), "grad_norm": (math.nan, 1.0), "mlm/loss": (math.nan, 4.0)})
    assert window.first_non_finite() == (2, {"loss": 1.0, "grad_norm": math.inf, "mlm/loss": 3.0})
    overflowing = MetricWindow()  # every value finite, their float32 sum is not: no divergence
    with np.errstate(over="ignore"):
        for step in (1, 2):
            overflowing.add_step(step, {"grad_norm": (np.float32(3e38), np.float32(1))})
    assert overflowing.first_non_finite() is None


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_diverging_run_stops_at_its_first_bad_step_and_keeps_the_last_good_checkpoint(tmp_path, backend):
    pytest.importorskip(backend)
    from plmforge.core.spec import validate_spec

    raw = _spec_dict(tmp_path, steps=5, checkpoint_every=1, log_every=5)
    raw["backend"] = {"name": backend}
    raw["tracking"]["enabled"] = True
    spec = validate_spec(raw)
    spec.training.optimizer.lr = 1e30  # beyond what a spec accepts: the run itself must notice
    with pytest.raises(TrainingDiverged) as caught:
        train(spec, show_progress=False)
    message = str(caught.value)
    # step 1 made the weights huge but finite; step 2's gradients are not
    assert message.startswith("training diverged at step 2: the gradient norm is nan")
    assert "objective 'mlm' (plugin mlm from plmforge" in message
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")] == ["step-000001"]
    assert "step-000001 is kept" in message
    assert _status_of_only_run(spec.tracking.tracking_uri) == "FAILED"


@pytest.mark.slow
def test_a_nan_loss_found_at_a_log_step_names_the_objective_and_its_first_nan_step(tmp_path, faulty):
    from plmforge.core.spec import validate_spec

    # checked at the log step 4 (and before checkpoints), no host sync per step: still step 3 is named
    raw = _spec_dict(tmp_path, "nanfromthird", steps=8, log_every=4, checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match=r"^training diverged at step 3: the loss of objective 'boom' "
                                               r"\(plugin nanfromthird from faulty-objectives 2\.0\) is nan"):
        train(validate_spec(raw), show_progress=False)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")] == ["step-000002"]


# -- a plugin objective that raises -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_an_exception_in_an_objectives_loss_names_the_objective_and_the_call(tmp_path, faulty, backend):
    pytest.importorskip(backend)
    from plmforge.core.spec import validate_spec

    raw = _spec_dict(tmp_path, "lossboom", steps=2)
    raw["backend"] = {"name": backend}
    with pytest.raises(ObjectiveFailed) as caught:
        train(validate_spec(raw), show_progress=False)
    assert str(caught.value) == ("objective 'boom' (plugin lossboom from faulty-objectives 2.0) failed in loss(): "
                                 "ValueError: loss exploded on purpose (--debug shows the traceback)")
    assert isinstance(caught.value.__cause__, ValueError)  # the plugin's own traceback stays reachable


@pytest.mark.slow
def test_an_exception_in_make_example_names_the_objective_on_the_command_line(tmp_path, faulty):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec_dict(tmp_path, "exampleboom", steps=2)))
    result = CliRunner().invoke(main, ["train", str(spec_file), "--no-progress"])
    assert result.exit_code == 1
    assert ("error: objective 'boom' (plugin exampleboom from faulty-objectives 2.0) failed in make_example(): "
            "KeyError: 'no such feature'") in result.output
    assert "Traceback" not in result.output
    debug = CliRunner().invoke(main, ["--debug", "train", str(spec_file), "--no-progress"])
    assert isinstance(debug.exception, ObjectiveFailed) and isinstance(debug.exception.__cause__, KeyError)


# -- checkpoints: a full disk, a write cut short --------------------------------------------------------
def test_disk_full_is_recognised_however_it_arrives():
    assert is_disk_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert is_disk_full(RuntimeError("Error while serializing: IoError(No space left on device (os error 28))"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def _fill_disk_at(monkeypatch, call: int) -> None:
    """From the ``call``-th safetensors write on, the disk is full (after half a file was written)."""
    real_save = checkpoint.save_file
    calls = {"n": 0}

    def save_file(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] >= call:
            with open(filename, "wb") as handle:
                handle.write(b"\x00" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_file)


@pytest.mark.slow
def test_a_full_disk_while_saving_says_so_and_keeps_the_last_good_checkpoint(tmp_path, tiny_spec, monkeypatch):
    spec = tiny_spec(_spec_dict(tmp_path, steps=4, checkpoint_every=2))
    _fill_disk_at(monkeypatch, 3)  # the weights of the second checkpoint
    with pytest.raises(CheckpointError) as caught:
        train(spec, show_progress=False)
    assert str(caught.value).startswith("no space left on device while writing the checkpoint of step 4 under ")
    assert "step-000002 is kept" in str(caught.value) and "--resume" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
    root = checkpoint.checkpoint_root(tmp_path / "run")
    assert sorted(p.name for p in root.iterdir()) == ["step-000002"]


@pytest.mark.slow
def test_a_full_disk_exits_non_zero_without_traceback(tmp_path, monkeypatch):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec_dict(tmp_path, steps=2, checkpoint_every=2)))
    _fill_disk_at(monkeypatch, 1)
    result = CliRunner().invoke(main, ["train", str(spec_file), "--no-progress"])
    assert result.exit_code == 1
    assert "error: no space left on device while writing the checkpoint of step 2" in result.output
    assert "no checkpoint was written" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_a_resumed_run_removes_writes_a_kill_left_unfinished(tmp_path, tiny_spec, monkeypatch):
    from plmforge.core import progress

    warnings: list[str] = []
    monkeypatch.setattr(progress, "warn", lambda message, console=None: warnings.append(message))
    raw = _spec_dict(tmp_path, steps=2, checkpoint_every=2)
    train(tiny_spec(raw), show_progress=False)
    root = checkpoint.checkpoint_root(tmp_path / "run")
    unfinished = root / ".tmp-step-000004-k1lled"  # what kill -9 during a checkpoint write leaves
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"\x00" * 10)
    raw["training"]["steps"] = 4
    result = train(tiny_spec(raw), resume=True, show_progress=False)
    assert result.status == "finished"
    assert sorted(p.name for p in root.iterdir()) == ["step-000002", "step-000004"]
    assert warnings == ["removed 1 unfinished checkpoint write(s) of a run stopped while saving: "
                        ".tmp-step-000004-k1lled"]


# -- tracking -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_whose_tracking_failed_is_still_closed_in_mlflow(tmp_path, tiny_spec, monkeypatch):
    """Logging fails once (the server hiccuped); at the end the run is marked FINISHED, not left RUNNING."""
    from mlflow.tracking import MlflowClient

    from plmforge.core import progress

    warnings: list[str] = []
    monkeypatch.setattr(progress, "warn", lambda message, console=None: warnings.append(message))
    real_log_batch = MlflowClient.log_batch
    calls = {"n": 0}

    def flaky_log_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("server restarting")
        return real_log_batch(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky_log_batch)
    raw = tiny_spec_dict(tmp_path, steps=2, checkpoint_every=2, eval_every=100)
    result = train(tiny_spec(raw), show_progress=False)
    assert result.status == "finished" and "server restarting" in result.tracking_failure
    assert len(warnings) == 1 and "training goes on" in warnings[0]
    assert _status_of_only_run(raw["tracking"]["tracking_uri"]) == "FINISHED"
