"""The MLflow web UI, in a real browser, shows what a plmforge run logged.

A tiny run with one task, ``mlflow server`` on its store, and headless Chromium's rendered DOM
(``--dump-dom`` after the page has drawn) of the pretraining run's page and its task run's page:
every task metric's name and value must be on the pages. Skips where no Chromium is installed
(the Debian package ``chromium``). ``examples/mlflow_ui_tour.py`` takes screenshots of the same pages.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import tiny_spec_dict

pytest.importorskip("torch")

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium or chromium-browser on PATH")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group (the server and the workers it started), SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


@pytest.fixture
def mlflow_ui(request):
    """Factory: ``mlflow server`` for a store on a free port; its base URL. Stopped however the test ends."""

    def start(tracking_uri: str, log: Path) -> str:
        port = _free_port()
        # no background job runner: seven processes for GenAI jobs that this test does not need
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
                                     "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        request.addfinalizer(lambda: _stop(proc))
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                with urllib.request.urlopen(url + "health", timeout=2) as reply:
                    if reply.status == 200:
                        return url
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"mlflow server did not answer within 60 s:\n{log.read_text()[-2000:]}")

    return start


def _rendered(url: str, profile: Path) -> str:
    """The page's DOM after Chromium has run its scripts and fetched its data (10 s of virtual time)."""
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                             "--window-size=1400,1200", "--virtual-time-budget=10000", "--dump-dom", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        dom, errors = proc.communicate(timeout=90)
    finally:
        _stop(proc)  # the browser's helper processes too, should it hang
    assert proc.returncode == 0, errors[-2000:]
    return dom


def _shown(value: float) -> str:
    """A metric value as the UI prints it (JavaScript's shortest round-trip text, as Python's repr)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def test_run_pages_show_the_task_metrics(tmp_path, mlflow_ui):
    from mlflow.tracking import MlflowClient

    from plmforge.core.run import train
    from plmforge.core.spec import validate_spec

    raw = tiny_spec_dict(tmp_path, steps=2, checkpoint_every=2, eval_every=2)
    raw["tasks"] = [{"name": "antimicrobial", "label": "amp", "max_train_proteins": 80, "max_test_proteins": 40,
                     "head": {"kind": "linear", "epochs": 2, "batch_size": 32}}]
    raw["evaluation"] = {"references": [], "bootstrap_resamples": 100}
    result = train(validate_spec(raw), show_progress=False)
    uri = raw["tracking"]["tracking_uri"]
    client = MlflowClient(uri)
    parent = client.get_run(result.tracking_run_id)
    (child,) = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    task_metrics = {k: v for k, v in parent.data.metrics.items() if k.startswith("task/amp/")}
    assert "task/amp/accuracy" in task_metrics

    base = mlflow_ui(uri, tmp_path / "server.log")
    eid = parent.info.experiment_id
    page = _rendered(f"{base}#/experiments/{eid}/runs/{parent.info.run_id}", tmp_path / "chromium")
    assert parent.info.run_name in page and child.info.run_name in page  # the run and, as a child run, its task
    for key, value in task_metrics.items():
        assert f">{key}<" in page, key  # a cell of the metrics table
        assert _shown(value) in page, (key, value)
    page = _rendered(f"{base}#/experiments/{eid}/runs/{child.info.run_id}", tmp_path / "chromium")
    assert child.info.run_name in page and parent.info.run_name in page  # the task run and its parent
    for key in child.data.metrics:  # the task run's own names (head curves, timings) as well
        assert f">{key}<" in page, key
    assert _shown(child.data.metrics["task/amp/accuracy"]) in page
