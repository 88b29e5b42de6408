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
               "--set", "training.batch_size.tokens=2048"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "finished 6 steps of 'quickstart'" in out.stdout
    assert "val/mlm/masked_residue_ce" in out.stdout
    assert (tmp_path / "runs" / "quickstart" / "checkpoints" / "step-000006" / "model.safetensors").is_file()
    assert (tmp_path / "mlflow.db").is_file()  # the default tracking URI, in the working directory
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["quickstart"], output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["plmforge.backend"] == "torch"
    # a second train into the same output directory refuses to clobber it, and --resume is the way on
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 1 and "--resume" in again.stderr and "Traceback" not in again.stderr
