"""JAX multi-process on one machine: two CPU processes joined by ``jax.distributed`` on 127.0.0.1 train
what one process trains on the same global batch; only process 0 logs and writes; a stopped run resumes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import tiny_spec_dict

pytest.importorskip("jax")
mlflow = pytest.importorskip("mlflow")

from safetensors.numpy import load_file  # noqa: E402

from plmforge.core import checkpoint  # noqa: E402
from plmforge.core.run import train  # noqa: E402
from plmforge.core.spec import validate_spec  # noqa: E402

pytestmark = pytest.mark.slow

PROCESSES = 2
TIMEOUT_S = 240  # per launch; a process waiting on a dead peer is killed, never left hanging

# Stops every process at a step as Ctrl-C would (each process raises at the same step).
STOP_SCRIPT = textwrap.dedent("""
    import sys
    from plmforge.core.hookspecs import hookimpl
    from plmforge.core.run import train
    from plmforge.core.spec import load_spec

    class StopAt:
        @hookimpl
        def plmforge_step_end(self, run, step, metrics):
            if step == int(sys.argv[2]):
                raise KeyboardInterrupt

        @hookimpl
        def plmforge_run_end(self, run, status, summary):
            print("examples made/planned:", summary["examples"]["made"], summary["examples"]["planned"])

    try:
        train(load_spec(sys.argv[1]), hooks=[StopAt()], show_progress=False)
    except KeyboardInterrupt:
        pass
""")


def spec_dict(tmp_path: Path, name: str, **backend) -> dict:
    spec = tiny_spec_dict(tmp_path, gradient_accumulation=2, checkpoint_every=6)
    spec["output_dir"] = str(tmp_path / name)
    spec["backend"] = {"name": "jax", **backend}
    spec["tracking"]["experiment"] = name
    return spec


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(args: list[str], tmp_path: Path, devices_per_process: int) -> list[subprocess.CompletedProcess]:
    """Run ``python ARGS`` as the processes of one JAX multi-process run; stop them all if one fails or hangs.

    A hung process is aborted (SIGABRT: Python's fault handler prints where each thread waited).
    """
    address = f"127.0.0.1:{free_port()}"  # the coordinator listens on the loopback interface only
    base = {**os.environ, "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
            "JAX_COORDINATOR_ADDRESS": address, "JAX_COORDINATOR_BIND_ADDRESS": address,
            "JAX_NUM_PROCESSES": str(PROCESSES)}
    procs = [subprocess.Popen([sys.executable, *args], cwd=tmp_path, env={**base, "JAX_PROCESS_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(PROCESSES)]
    deadline = time.monotonic() + TIMEOUT_S
    while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
        if any(proc.returncode not in (None, 0) for proc in procs):
            time.sleep(5)  # a peer that failed: give the others a moment to fail on their own
            break
        time.sleep(0.2)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGABRT)
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    for index, result in enumerate(results):
        assert result.returncode == 0, f"process {index} (exit {result.returncode}):\n{result.stderr[-4000:]}"
    return results


def runs_of(tmp_path: Path, experiment: str) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def losses(tmp_path: Path, experiment: str) -> list[float]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    pretrain = next(r for r in runs_of(tmp_path, experiment) if r.data.tags["plmforge.kind"] == "pretrain")
    return [m.value for m in sorted(client.get_metric_history(pretrain.info.run_id, "train/loss"),
                                    key=lambda m: m.step)]


def test_two_processes_match_one_and_resume_after_a_stop(tmp_path):
    train(validate_spec(spec_dict(tmp_path, "single")), show_progress=False)  # one process, one device

    spec = spec_dict(tmp_path, "multi", multi_host=True, sharding="fsdp")
    # a downstream task after training: the main process scores it alone on its own devices
    spec["tasks"] = [{"name": "antimicrobial", "label": "amp", "head": {"kind": "linear", "epochs": 1},
                      "max_train_proteins": 60, "max_test_proteins": 30}]
    spec_file = tmp_path / "multi.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    script = tmp_path / "stop_at.py"
    script.write_text(STOP_SCRIPT)

    stopped = launch([str(script), str(spec_file), "3"], tmp_path, devices_per_process=2)
    made = [[int(n) for n in re.search(r"examples made/planned: (\d+) (\d+)", r.stdout).groups()] for r in stopped]
    planned = made[0][1]
    assert planned > 0 and [m[1] for m in made] == [planned, planned]
    assert sum(m[0] for m in made) == planned and 0 < made[0][0] < planned  # each process makes only its share
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "multi")] == ["step-000003"]

    resumed = launch(["-m", "plmforge.core.cli", "train", str(spec_file), "--resume", "--no-progress"], tmp_path,
                     devices_per_process=2)
    assert ["finished 6 steps" in r.stdout for r in resumed] == [True, False]  # process 0 alone reports

    runs = runs_of(tmp_path, "multi")
    parents = [r for r in runs if r.data.tags["plmforge.kind"] == "pretrain"]
    assert len(parents) == 1  # process 0 alone logs, and the resumed run continues its MLflow run
    parent = parents[0]
    tasks = [r for r in runs if r.data.tags["plmforge.kind"] == "task"]
    assert len(tasks) == len(runs) - 1 and {r.data.tags["mlflow.parentRunId"] for r in tasks} == {parent.info.run_id}
    assert sum(r.data.tags.get("plmforge.reference") == "model" for r in tasks) == 1
    assert "over 4 device(s), 2 process(es)" in parent.data.tags["plmforge.backend.parallelism"]
    assert 0.0 <= parent.data.metrics["task/amp/auroc"] <= 1.0

    reference = losses(tmp_path, "single")
    assert len(reference) == 6
    np.testing.assert_allclose(losses(tmp_path, "multi"), reference, rtol=1e-5)
    ours = load_file(str(checkpoint.latest_checkpoint(tmp_path / "multi") / checkpoint.WEIGHTS))
    theirs = load_file(str(checkpoint.latest_checkpoint(tmp_path / "single") / checkpoint.WEIGHTS))
    assert ours.keys() == theirs.keys()
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], atol=2e-5, err_msg=name)


def test_processes_that_cannot_split_a_step_share_each_micro_batch_by_rows(tmp_path):
    # gradient_accumulation 1 on two processes: each makes the step's one micro-batch, places its rows
    single = spec_dict(tmp_path, "single")
    single["training"].update(gradient_accumulation=1, steps=4, eval_every=4, checkpoint_every=4)
    train(validate_spec(single), show_progress=False)
    spec = spec_dict(tmp_path, "rows", multi_host=True)  # sharding: data, replicated parameters
    spec["training"] = single["training"]
    spec_file = tmp_path / "rows.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    launch(["-m", "plmforge.core.cli", "train", str(spec_file), "--no-progress"], tmp_path, devices_per_process=1)
    np.testing.assert_allclose(losses(tmp_path, "rows"), losses(tmp_path, "single"), rtol=1e-5)
    assert len(losses(tmp_path, "rows")) == 4


def test_multi_host_without_the_cluster_variables_says_what_to_set(tmp_path):
    spec = spec_dict(tmp_path, "partial", multi_host=True)
    spec_file = tmp_path / "partial.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}"}
    for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    failed = subprocess.run([sys.executable, "-m", "plmforge.core.cli", "train", str(spec_file), "--no-progress"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0
    assert "JAX_NUM_PROCESSES, JAX_PROCESS_ID not" in failed.stderr
    assert "Traceback" not in failed.stderr
