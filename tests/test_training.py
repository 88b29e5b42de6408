"""End-to-end training: stop-and-resume equality, checkpoints that survive crashes, MLflow contents,
and a tracking server that dies mid-run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import StopAt, tiny_spec_dict

from plmforge.core import checkpoint
from plmforge.core.errors import CheckpointError, PlmforgeError
from plmforge.core.hookspecs import hookimpl
from plmforge.core.run import train
from plmforge.core.spec import validate_spec

pytestmark = pytest.mark.slow


def losses(result) -> dict[int, float]:
    return {step: metrics["train/loss"] for step, metrics in result.history}


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_resumed_run_matches_uninterrupted_run(tmp_path, optimizer, backend):
    pytest.importorskip(backend)
    common = dict(steps=8, checkpoint_every=100, eval_every=100, optimizer={"name": optimizer, "lr": 3e-3})
    raw = tiny_spec_dict(tmp_path, **common)
    raw["backend"] = {"name": backend}
    raw["model"]["dropout_rate"] = 0.1  # dropout RNG must be restored too
    raw["tracking"]["enabled"] = False
    straight = train(validate_spec({**raw, "output_dir": str(tmp_path / "straight")}), show_progress=False)

    stopped_raw = {**raw, "output_dir": str(tmp_path / "stopped")}
    with pytest.raises(KeyboardInterrupt):
        train(validate_spec(stopped_raw), hooks=[StopAt(3)], show_progress=False)
    # the interrupt wrote a checkpoint at step 3 (no periodic one was due)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "stopped")] == ["step-000003"]
    resumed = train(validate_spec(stopped_raw), resume=True, show_progress=False)

    expected, got = losses(straight), losses(resumed)
    assert sorted(got) == [4, 5, 6, 7, 8]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    final_a = checkpoint.load_checkpoint(straight.checkpoint).weights
    final_b = checkpoint.load_checkpoint(resumed.checkpoint).weights
    for name in final_a:
        np.testing.assert_allclose(final_a[name], final_b[name], rtol=1e-5, atol=1e-6)


def test_compiled_torch_model_trains_like_the_eager_one(tmp_path):
    """backend.compile: torch.compile (inductor, dynamic shapes) changes speed, not the losses."""
    pytest.importorskip("torch")
    raw = tiny_spec_dict(tmp_path, steps=3, checkpoint_every=100, eval_every=100)
    raw["tracking"]["enabled"] = False
    eager = train(validate_spec({**raw, "output_dir": str(tmp_path / "eager")}), show_progress=False)
    raw["backend"]["compile"] = True
    compiled = train(validate_spec({**raw, "output_dir": str(tmp_path / "compiled")}), show_progress=False)
    expected, got = losses(eager), losses(compiled)
    assert sorted(got) == [1, 2, 3]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step


def test_existing_checkpoints_are_never_overwritten_silently(tmp_path, tiny_spec):
    raw = tiny_spec_dict(tmp_path, steps=2, checkpoint_every=2)
    raw["tracking"]["enabled"] = False
    train(tiny_spec(raw), show_progress=False)
    with pytest.raises(PlmforgeError, match="already holds checkpoints.*--resume"):
        train(tiny_spec(raw), show_progress=False)


def test_crash_while_writing_a_checkpoint_keeps_the_last_good_one(tmp_path, tiny_spec, monkeypatch):
    raw = tiny_spec_dict(tmp_path, steps=4, checkpoint_every=2)
    raw["tracking"]["enabled"] = False
    spec = tiny_spec(raw)
    real_save = checkpoint.save_file
    calls = {"n": 0}

    def failing_save(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:  # weights of the second checkpoint: write half a file, then die
            Path(filename).write_bytes(b"\x00" * 100)
            raise OSError("disk full")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(spec, show_progress=False)
    root = checkpoint.checkpoint_root(tmp_path / "run")
    assert sorted(p.name for p in root.iterdir()) == ["step-000002"]  # no partial directory left
    good = checkpoint.load_checkpoint(root / "step-000002")
    assert good.step == 2 and good.weights
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    result = train(spec, resume=True, show_progress=False)
    assert result.step == 4 and result.status == "finished"


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    broken = tmp_path / "step-000001"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"step-000001/model\.safetensors: cannot read"):
        checkpoint.load_checkpoint(broken)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        checkpoint.load_checkpoint(tmp_path / "nowhere")


def test_mlflow_run_carries_params_tags_metrics_and_artifacts(tmp_path, tiny_spec):
    import mlflow

    spec = tiny_spec(steps=4, log_every=2, eval_every=2, checkpoint_every=4)
    result = train(spec, show_progress=False)
    uri = spec.tracking.tracking_uri
    runs = mlflow.search_runs(experiment_names=["tests"], output_format="list",
                              filter_string="tags.`plmforge.backend` = 'torch'", **_tracking(uri))
    assert [r.info.run_id for r in runs] == [result.tracking_run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["training.steps"] == "4" and params["objectives.0.name"] == "mlm"
    assert json.loads(params["objectives.0.probabilities"]) == [0.15, 0.3]
    assert params["model.d_model"] == "32" and params["backend.name"] == "torch"
    tags = run.data.tags
    assert tags["plmforge.objectives"] == "mlm" and tags["plmforge.version"]
    assert tags["plmforge.plugin.objective.mlm"].startswith("plmforge ")
    assert tags["plmforge.plugin.backend.torch"].startswith("plmforge ")
    assert len(tags["plmforge.spec_sha256"]) == 64
    assert int(tags["plmforge.data.train.proteins"]) == 15183
    metrics = run.data.metrics
    for key in ("train/loss", "train/mlm/loss", "train/lr", "train/tokens_per_second", "train/grad_norm",
                "val/loss", "val/mlm/loss", "val/mlm/masked_residue_accuracy", "val/mlm/masked_residue_ce",
                "val/mlm/masked_residue_accuracy/p0.15", "val/mlm/masked_residue_accuracy/p0.3"):
        assert key in metrics, key
    client = mlflow.tracking.MlflowClient(uri)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [2, 4]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec.yaml", "checkpoint"} <= artifacts
    ckpt = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert "checkpoint/model.safetensors" in ckpt and "checkpoint/trainer_state.json" in ckpt
    logged_spec = client.download_artifacts(run.info.run_id, "spec.yaml", str(tmp_path))
    assert Path(logged_spec).read_text() == spec.to_yaml()
    assert (spec.resolved_output_dir / "spec.yaml").read_text() == spec.to_yaml()


def _tracking(uri):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KillServerAt:
    def __init__(self, process: subprocess.Popen, step: int) -> None:
        self.process, self.step = process, step

    @hookimpl
    def plmforge_step_end(self, run, step, metrics):
        if step == self.step:
            _kill_group(self.process)
            time.sleep(0.5)


def _kill_group(process: subprocess.Popen) -> None:
    """`mlflow server` serves from worker processes: end the whole process group, not just the parent."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def test_tracking_server_dying_mid_run_does_not_stop_training(tmp_path, tiny_spec, monkeypatch):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_port(port, server)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
        raw = tiny_spec_dict(tmp_path, steps=6, log_every=1, eval_every=3, checkpoint_every=3)
        raw["tracking"]["tracking_uri"] = f"http://127.0.0.1:{port}"
        warnings: list[str] = []
        spec = tiny_spec(raw)
        from plmforge.core import progress

        monkeypatch.setattr(progress, "warn", lambda message, console=None: warnings.append(message))
        result = train(spec, hooks=[KillServerAt(server, 2)], show_progress=False)
    finally:
        _kill_group(server)
    assert result.status == "finished" and result.step == 6
    assert result.tracking_run_id is not None and result.tracking_failure
    assert len(warnings) == 1 and "training goes on" in warnings[0]
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")] == ["step-000003", "step-000006"]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError("mlflow server exited early")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("mlflow server did not start")


def test_tracking_unreachable_from_the_start_warns_and_trains(tmp_path, tiny_spec, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    raw = tiny_spec_dict(tmp_path, steps=2, checkpoint_every=2)
    raw["tracking"]["tracking_uri"] = f"http://127.0.0.1:{_free_port()}"
    result = train(tiny_spec(raw), show_progress=False)
    assert result.status == "finished" and result.tracking_run_id is None
    assert "cannot start an MLflow run" in result.tracking_failure


def test_fasta_source_with_bad_records_trains_and_logs_counts(tmp_path, tiny_spec):
    """A gzipped FASTA with lowercase, an empty record and an invalid letter, in skip mode."""
    import gzip

    import mlflow

    from plmforge.core.data.sources import load_builtin

    test = load_builtin("scl2205")["test"]
    records = [f">{test.name(i)}\n{test.sequence(i).lower()}\n" for i in range(300)]
    records += [">empty\n\n", ">bad\nMKV1LLA\n"]
    path = tmp_path / "proteins.fasta.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("".join(records))
    raw = tiny_spec_dict(tmp_path, steps=2, eval_every=2, checkpoint_every=2)
    raw["data"] = {"source": str(path), "on_invalid": "skip", "validation_fraction": 0.1, "max_length": 64}
    result = train(tiny_spec(raw), show_progress=False)
    report = result.data_report
    assert report["source.records_read"] == 302 and report["source.skipped_empty"] == 1
    assert report["source.skipped_invalid"] == 1 and report["source.records_kept"] == 300
    assert report["train.proteins"] + report["validation.proteins"] == 300
    assert 10 < report["validation.proteins"] < 60
    run = mlflow.tracking.MlflowClient(raw["tracking"]["tracking_uri"]).get_run(result.tracking_run_id)
    assert run.data.tags["plmforge.data.source.skipped_invalid"] == "1"
    raw["data"]["on_invalid"] = "error"
    raw["output_dir"] = str(tmp_path / "strict")
    with pytest.raises(PlmforgeError, match=r"proteins\.fasta\.gz:\d+: record 'bad'.*'1'"):
        train(tiny_spec(raw), show_progress=False)
