"""What a pretraining run records in MLflow besides its metrics: params, tags, data, description, the "view it" hint.

One tiny ``plmforge train SPEC --set ...`` on the built-in corpus (module fixture) is read by every test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from helpers import tiny_spec_dict

from plmforge.core.cli import main
from plmforge.core.spec import validate_spec
from plmforge.core.tracking import (
    EXPERIMENT_TAGS,
    Tracker,
    flatten,
    replicate_group,
    run_params,
    runs_page_hint,
    short_overrides,
    source_tags,
)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(spec path, CLI output, MlflowClient, the run) of one tiny train with two --set overrides."""
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("record")
    raw = tiny_spec_dict(tmp, steps=2, eval_every=2, checkpoint_every=2)
    raw["description"] = "Does a lower learning rate help the tiny model?"
    raw["tracking"]["log_checkpoint"] = False
    raw["output_dir"] = str(tmp / "{name}")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    overrides = ["training.optimizer.lr=0.002", f"output_dir={tmp / 'tiny-lr'}"]
    out = CliRunner().invoke(main, ["train", str(path), "--no-progress", *[a for o in overrides for a in ("--set", o)]])
    assert out.exit_code == 0, out.output
    client = MlflowClient(raw["tracking"]["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    return path, overrides, out.output, client, run


@pytest.mark.slow  # shares one tiny training run (~6 s)
def test_params_describe_the_run_only(recorded):
    path, _, _, _, run = recorded
    params = run.data.params
    assert params["training.optimizer.lr"] == "0.002" and params["model.d_model"] == "32"
    assert not [k for k in params if k in ("name", "output_dir", "description") or k.startswith("tracking.")]
    spec = validate_spec(yaml.safe_load(path.read_text()))
    assert params == run_params(spec.model_copy(update={"training": spec.training.model_copy(update={
        "optimizer": spec.training.optimizer.model_copy(update={"lr": 0.002})})}).to_dict())


@pytest.mark.slow  # shares one tiny training run (~6 s)
def test_replicate_group_still_digests_the_whole_spec(recorded):
    path, overrides, _, _, run = recorded
    raw = yaml.safe_load(path.read_text())
    raw["training"]["optimizer"]["lr"] = 0.002
    raw["description"] = "another description, same experiment"
    assert run.data.tags["plmforge.replicate_group"] == replicate_group(flatten(validate_spec(raw).to_dict()))


@pytest.mark.slow  # shares one tiny training run (~6 s)
def test_backend_counters_are_tags_not_metrics(recorded):
    *_, run = recorded
    assert not [k for k in run.data.metrics if k.startswith("backend/")]
    assert run.data.tags["plmforge.backend.compilations"] == "0"  # eager PyTorch
    assert "train/loss" in run.data.metrics and "val/loss" in run.data.metrics


@pytest.mark.slow  # shares one tiny training run (~6 s)
def test_source_overrides_name_and_description_are_recorded(recorded):
    path, overrides, _, _, run = recorded
    tags = run.data.tags
    assert tags["mlflow.source.name"] == tags["plmforge.spec_path"] == str(path.resolve())
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["plmforge.overrides"].splitlines() == overrides
    assert tags["plmforge.output_dir"] == str(Path(overrides[1].split("=", 1)[1]).resolve())
    assert run.info.run_name == "tiny lr=0.002"  # output_dir does not describe the run: left out of the name
    description, summary = tags["mlflow.note.content"].split("\n\n")
    assert description == "Does a lower learning rate help the tiny model?"
    assert summary.startswith("mlm on builtin:scl2205; custom model, ") and "2 steps" in summary
    assert "--set training.optimizer.lr=0.002" in summary


@pytest.mark.slow  # shares one tiny training run (~6 s)
def test_training_and_validation_data_are_dataset_inputs(recorded):
    *_, client, run = recorded
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    by_context = {i.tags[0].value: i.dataset for i in inputs}
    assert set(by_context) == {"training", "validation"}
    for context, dataset in by_context.items():
        assert dataset.name == "builtin:scl2205" and dataset.source_type == "code"
        profile = json.loads(dataset.profile)
        assert profile["split"] == {"training": "train", "validation": "validation"}[context]
        assert profile["proteins"] == int(run.data.tags[f"plmforge.data.{profile['split']}.proteins"])
        assert re.fullmatch(r"[0-9a-f]{12}", dataset.digest) and len(profile["sha256"]) == 64
    assert by_context["training"].digest != by_context["validation"].digest


@pytest.mark.slow  # shares one tiny training run (~6 s)
def test_experiment_kind_and_hint_url(recorded):
    *_, output, client, run = recorded
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == EXPERIMENT_TAGS["mlflow.experimentKind"]
    uri = client._tracking_client.tracking_uri
    assert f"view it: mlflow ui --backend-store-uri {uri}" in output
    assert f"then open http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs" \
           "?workflowType=machine_learning" in output


def test_existing_experiment_gets_the_kind_and_hints_for_servers(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("made-before")
    tracker = Tracker(True, uri, "made-before", "r", overrides=["training.steps=5", "seed=3"])
    assert tracker.start() and tracker.experiment_id == old
    tracker.end()
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert tracker.short_label == "steps=5, seed=3"
    assert Tracker(False, uri, "x", "r").short_label == ""
    assert runs_page_hint("https://mlflow.example.org/", "7") == [
        "view it: https://mlflow.example.org/#/experiments/7/runs?workflowType=machine_learning"]
    assert runs_page_hint("databricks", "7") == []
    assert short_overrides(["output_dir=x", "tracking.run_name=y"]) == ""
    assert short_overrides(["objectives[0].weight=2", "training.optimizer.weight_decay=0.05"]) == \
        "weight=2, weight_decay=…"


def test_unused_head_options_are_not_params(tmp_path):
    raw = tiny_spec_dict(tmp_path)
    raw["tasks"] = [{"name": "secondary_structure", "label": "ss3"},  # frozen linear probe, residue level
                    {"name": "contact", "head": {"kind": "convbert", "finetune": "lora"}}]
    params = run_params(validate_spec(raw).to_dict())
    probe = {k.split(".", 3)[3] for k in params if k.startswith("tasks.0.head.")}
    assert probe == {"kind", "finetune", "epochs", "min_epochs", "patience", "lr", "weight_decay", "batch_size",
                     "seed", "repeats"}
    tuned = {k.split(".", 3)[3] for k in params if k.startswith("tasks.1.head.")}
    assert {"pair_dim", "lora_rank", "lora_alpha", "encoder_lr", "heads", "kernel_size", "dropout"} <= tuned


def test_python_api_passes_the_spec_file_and_overrides_to_the_run(tmp_path, monkeypatch):
    import plmforge
    from plmforge.core import run as running

    seen = []
    monkeypatch.setattr(running, "train", lambda spec, **kwargs: seen.append(kwargs) or running.RunResult(0, "done"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(tmp_path)))
    plmforge.train(path, {"training.steps": 3})
    plmforge.train(yaml.safe_load(path.read_text()), ["seed=1"])
    assert [(k["spec_path"], k["overrides"]) for k in seen] == [(path, ["training.steps=3"]), (None, ["seed=1"])]


def test_task_runs_show_their_parents_source(tmp_path):
    """A nested run copies where its parent came from (MLflow's Source column), not what the parent did."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = Tracker(True, uri, "tests", "parent", overrides=["training.optimizer.lr=0.002"])
    parent.start()
    spec = tmp_path / "spec.yaml"
    parent.set_tags({"plmforge.kind": "pretrain", "mlflow.source.git.commit": "abc123"})
    parent.set_tags(source_tags(spec, ["x=1"]))
    child = parent.child("ss3·model lr=0.002")
    child.set_tags({"plmforge.kind": "task"})
    child.end()
    parent.end()
    tags = MlflowClient(uri).get_run(child.run_id).data.tags
    assert tags["mlflow.source.name"] == tags["plmforge.spec_path"] == str(spec.resolve())
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.git.commit"] == "abc123"
    assert tags["plmforge.kind"] == "task" and "plmforge.overrides" not in tags


def test_large_files_are_digested_by_size_and_ends(tmp_path, monkeypatch):
    """A corpus-sized FASTA is not read whole at every start; its digest still changes with its ends or size."""
    from plmforge.core import files

    monkeypatch.setattr(files, "WHOLE_DIGEST_LIMIT", 64)
    monkeypatch.setattr(files, "_DIGEST_SAMPLE", 16)
    small, large = tmp_path / "small.fasta", tmp_path / "large.fasta"
    small.write_bytes(b">a\nMKV\n")
    assert files.content_digest(small) == files.sha256_file(small)
    body = b">p\n" + b"ACDEFGHIKLMNPQRSTVWY" * 20 + b"\n"
    large.write_bytes(body)
    first = files.content_digest(large)
    assert first != files.sha256_file(large) and first == files.content_digest(large)
    large.write_bytes(body[:-2] + b"Q\n")  # the last residue changes
    assert files.content_digest(large) != first
