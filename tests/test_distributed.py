"""Distributed PyTorch (DDP and FSDP2 over gloo): two CPU processes started by torchrun train what one
process trains on the same global batch, only rank 0 logs and writes, and a stopped run resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import tiny_spec_dict

pytest.importorskip("torch")
mlflow = pytest.importorskip("mlflow")

from safetensors.numpy import load_file  # noqa: E402

from plmforge.core import checkpoint  # noqa: E402
from plmforge.core.embedding import embed_sequences, load_model  # noqa: E402
from plmforge.core.errors import PlmforgeError  # noqa: E402
from plmforge.core.run import train  # noqa: E402
from plmforge.core.spec import validate_spec  # noqa: E402

pytestmark = pytest.mark.slow

# Stops every process at a step as Ctrl-C would (torchrun forwards SIGINT to each of them).
STOP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from plmforge.core.hookspecs import hookimpl
    from plmforge.core.run import train
    from plmforge.core.spec import load_spec

    class StopAt:
        @hookimpl
        def plmforge_step_end(self, run, step, metrics):
            if step == int(sys.argv[2]):
                raise KeyboardInterrupt

        @hookimpl
        def plmforge_run_end(self, run, status, summary):  # every process: the examples it made
            with open(f"{sys.argv[1]}.rank{os.environ['RANK']}.json", "w") as out:
                json.dump(summary["examples"], out)

    try:
        train(load_spec(sys.argv[1]), hooks=[StopAt()], show_progress=False)
    except KeyboardInterrupt:
        pass
""")


def spec_dict(tmp_path: Path, name: str, **backend) -> dict:
    spec = tiny_spec_dict(tmp_path, gradient_accumulation=2, checkpoint_every=6)
    spec["output_dir"] = str(tmp_path / name)
    spec["backend"].update(backend)
    # Two objectives on different outputs: masked LM on the decoder, BERT-style on the encoder head,
    # so each backward leaves some parameters without a gradient (DDP must find them).
    spec["objectives"] = [{"name": "mlm", "probabilities": [0.15, 0.3]}, {"name": "bert_mlm"}]
    spec["tracking"]["experiment"] = name
    return spec


def torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def losses(tmp_path: Path, experiment: str) -> tuple[int, list[float]]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    pretrain = next(r for r in runs if r.data.tags["plmforge.kind"] == "pretrain")
    history = sorted(client.get_metric_history(pretrain.info.run_id, "train/loss"), key=lambda m: m.step)
    return len(runs), [m.value for m in history]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("distributed")
    spec = validate_spec(spec_dict(tmp_path, "single"))
    train(spec, show_progress=False)
    return tmp_path


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_processes_match_one_and_resume_after_a_stop(single_process, kind):
    tmp_path = single_process
    spec = spec_dict(tmp_path, kind, distributed=kind)
    # a downstream task after training: the main process scores it on a single-process copy of the weights
    spec["tasks"] = [{"name": "antimicrobial", "label": "amp", "head": {"kind": "linear", "epochs": 1},
                      "max_train_proteins": 100, "max_test_proteins": 50}]
    spec["evaluation"] = {"references": ["random"]}  # built in the main process alone, too
    spec_file = tmp_path / f"{kind}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    script = tmp_path / "stop_at.py"
    script.write_text(STOP_SCRIPT)

    stopped = torchrun([str(script), str(spec_file), "3"], tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / kind)] == ["step-000003"]
    # each process stepped over every example of the 3 steps but made (cropped, masked, collated) its share only
    examples = [json.loads(Path(f"{spec_file}.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert examples[0]["planned"] == examples[1]["planned"] > 0
    assert examples[0]["made"] + examples[1]["made"] == examples[0]["planned"]
    assert all(0 < e["made"] < e["planned"] for e in examples)

    resumed = torchrun(["-m", "plmforge.core.cli", "train", str(spec_file), "--resume", "--no-progress"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("finished 6 steps") == 1  # only rank 0 reports

    runs, distributed_losses = losses(tmp_path, kind)
    assert runs == 3  # rank 0 alone logs: the resumed run continues the same MLflow run; the task's two runs
    _, reference = losses(tmp_path, "single")
    assert len(distributed_losses) == len(reference) == 6
    np.testing.assert_allclose(distributed_losses, reference, rtol=1e-5)

    ours = load_file(str(checkpoint.latest_checkpoint(tmp_path / kind) / checkpoint.WEIGHTS))
    theirs = load_file(str(checkpoint.latest_checkpoint(tmp_path / "single") / checkpoint.WEIGHTS))
    assert ours.keys() == theirs.keys()
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], atol=2e-5, err_msg=name)

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(kind).experiment_id])
    parent = next(r for r in runs if r.data.tags["plmforge.kind"] == "pretrain")
    tasks = {r.data.tags["plmforge.reference"]: r for r in runs if r.data.tags["plmforge.kind"] == "task"}
    assert sorted(tasks) == ["model", "random"]
    task = tasks["model"]
    assert "over 2 processes (gloo)" in parent.data.tags["plmforge.backend.parallelism"]
    assert task.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert 0.0 <= task.data.metrics["task/amp/auroc"] <= 1.0 and "task/amp/auroc" in parent.data.metrics

    # the checkpoint of a torchrun run (its spec says distributed) is read by one process
    backend, vocab = load_model(checkpoint.latest_checkpoint(tmp_path / kind))
    hidden = embed_sequences(backend, vocab, ["MKTAYIAKQR"])
    assert hidden[0].shape == (10, spec["model"]["d_model"]) and np.isfinite(hidden[0]).all()


def test_micro_batches_must_split_evenly_over_the_processes(tmp_path):
    spec = spec_dict(tmp_path, "uneven", distributed="ddp")
    spec["training"]["gradient_accumulation"] = 1
    spec_file = tmp_path / "uneven.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    failed = torchrun(["-m", "plmforge.core.cli", "train", str(spec_file), "--no-progress"], tmp_path)
    assert failed.returncode != 0
    assert "training.gradient_accumulation is 1 but 2 processes" in failed.stderr


def test_distributed_without_torchrun_says_how_to_launch(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    spec = validate_spec(spec_dict(tmp_path, "alone", distributed="fsdp"))
    with pytest.raises(PlmforgeError, match="not started by torchrun.*torchrun --nproc-per-node"):
        train(spec, show_progress=False)
