"""The ready multi-task specs run end to end on both backends through the CLI, with each objective's
metrics in MLflow; the profile objective's pyhmmer search is cached between runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from helpers import tiny_spec_dict

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: spec -> (objective label, a metric of it) for every objective the spec names
EXPECTED = {
    "ankh3": {"nlu": "masked_residue_accuracy", "s2s": "next_residue_accuracy"},
    "profile-multitask": {"mlm": "masked_residue_accuracy", "profile": "profile_kl"},
}


def short_run(spec: str, backend: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "plmforge.core.cli", "train", str(REPO / "specs" / f"{spec}.yaml"),
               "--no-progress", "--set", f"backend.name={backend}", "--set", "training.steps=6",
               "--set", "training.log_every=2", "--set", "training.eval_every=6", "--set", "training.eval_batches=2",
               "--set", "training.checkpoint_every=6", "--set", "training.batch_size.tokens=1024",
               "--set", "model.num_layers=2", "--set", "model.d_model=64", "--set", "model.d_ff=128"]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("spec", sorted(EXPECTED))
def test_ready_spec_trains_and_logs_every_objective(tmp_path, spec, backend):
    out = short_run(spec, backend, tmp_path)
    assert out.returncode == 0, out.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=[spec], output_format="list")
    assert run.data.tags["plmforge.backend"] == backend
    metrics = run.data.metrics
    for label, metric in EXPECTED[spec].items():
        assert f"val/{label}/{metric}" in metrics and f"val/{label}/loss" in metrics
        assert f"val/{label}/{metric}" in out.stdout  # and the CLI summary shows it
    trained = {label for label in EXPECTED[spec] if f"train/{label}/loss" in metrics}
    assert trained == set(EXPECTED[spec])  # every objective trained at least once in 6 steps
    if spec == "ankh3":  # one objective per step, drawn by weight
        assert 0 < metrics["train/nlu/sampled"] + metrics["train/s2s/sampled"] <= 2
    else:  # only proteins with an MSA feed the profile objective
        assert int(run.data.tags["plmforge.data.profile.train.proteins"]) == 404
        assert int(run.data.tags["plmforge.data.profile.validation.proteins"]) == 60


def test_profile_search_builds_msas_once_and_reuses_them(tmp_path, monkeypatch):
    """MSAs built with phmmer for proteins no file covers; the second run finds them in the cache."""
    pytest.importorskip("pyhmmer")
    from plmforge.core.data import msa_search
    from plmforge.core.data.sources import load_builtin
    from plmforge.core.run import train
    from plmforge.core.spec import validate_spec

    validation = load_builtin("scl2205")["validation"]
    train_split = load_builtin("scl2205")["train"]
    proteins = tmp_path / "proteins.fasta"
    proteins.write_text("".join(f">{validation.name(i)}\n{validation.sequence(i)}\n" for i in range(12)))
    database = tmp_path / "database.fasta"
    database.write_text("".join(f">{train_split.name(i)}\n{train_split.sequence(i)}\n" for i in range(1500)))
    raw = tiny_spec_dict(tmp_path, steps=2, eval_every=2, checkpoint_every=2)
    raw["model"]["num_decoder_layers"] = 0
    raw["data"] = {"source": str(proteins), "validation_source": str(proteins), "max_length": 64}
    raw["objectives"] = [{"name": "profile", "msas": [], "proteins": "all",
                          "search": {"database": str(database), "max_queries": 6, "cpus": 1,
                                     "cache_dir": str(tmp_path / "cache")}}]
    raw["tracking"]["enabled"] = False
    first = train(validate_spec({**raw, "output_dir": str(tmp_path / "a")}), show_progress=False)
    # up to max_queries per split: 6 for training, then the other 6 for validation (the same 12 proteins)
    assert len(list((tmp_path / "cache").rglob("*.a3m"))) == 12
    assert "val/profile/profile_kl" in first.eval_metrics

    def no_search(*args, **kwargs):
        raise AssertionError("searched although every MSA is cached")

    import pyhmmer

    monkeypatch.setattr(pyhmmer.hmmer, "phmmer", no_search)
    second = train(validate_spec({**raw, "output_dir": str(tmp_path / "b")}), show_progress=False)
    assert second.eval_metrics["val/profile/profile_kl"] == pytest.approx(first.eval_metrics["val/profile/profile_kl"])
    assert msa_search is not None
