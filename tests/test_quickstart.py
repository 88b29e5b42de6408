"""The README's main command on a short leash: the quickstart spec through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_spec_trains_through_the_cli(tmp_path):
    command = [sys.executable, "-m", "plmforge.core.cli", "train", str(REPO / "specs" / "quickstart.yaml"),
               "--set", "training.steps=6", "--set", "training.log_every=3", "--set", "training.eval_every=6",
               "--set", "training.eval_batches=2", "--set", "training.checkpoint_every=6",
               "--set", "training.batch_size.tokens=2048",
               # the spec's downstream tasks, on fewer proteins and epochs
               "--set", "tasks[0].max_train_proteins=16", "--set", "tasks[0].max_test_proteins=8",
               "--set", "tasks[0].head.epochs=2", "--set", "tasks[1].max_train_proteins=40",
               "--set", "tasks[1].max_test_proteins=20", "--set", "tasks[1].head.epochs=2",
               "--set", "evaluation.references=[onehot]"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "finished 6 steps of 'quickstart'" in out.stdout
    assert "val/mlm/masked_residue_ce" in out.stdout
    assert (tmp_path / "runs" / "quickstart" / "checkpoints" / "step-000006" / "model.safetensors").is_file()
    assert (tmp_path / "mlflow.db").is_file()  # the default tracking URI, in the working directory
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["quickstart"], output_format="list")
    (top,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert top.data.tags["plmforge.backend"] == "torch"
    assert {"task/ss3/q3", "task/localization/accuracy"} <= set(top.data.metrics)
    (onehot,) = [r for r in runs if r.data.tags.get("plmforge.reference") == "onehot"
                 and r.data.tags.get("plmforge.task") == "ss3"]
    assert "task/ss3/q3" in onehot.data.metrics  # a reference's results are on its own run, named as the model's
    assert len(runs) == 5  # the pretraining run and one nested run per task and representation
    assert "downstream tasks (test split):" in out.stdout and "one-hot" in out.stdout
    # a second train into the same output directory refuses to clobber it, and --resume is the way on
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 1 and "--resume" in again.stderr and "Traceback" not in again.stderr
