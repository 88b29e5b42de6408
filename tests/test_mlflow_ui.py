"""The MLflow web UI, in a real browser, shows what a plmforge run logged.

A tiny run with one task, ``mlflow server`` on its store, and headless Chromium's rendered DOM
(``--dump-dom`` after the page has drawn) of the pretraining run's page and its task run's page:
every task metric's name and value must be on the pages. Skips where no Chromium is installed
(the Debian package ``chromium``). ``examples/mlflow_ui_tour.py`` takes screenshots of the same pages.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_spec_dict

pytest.importorskip("torch")

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium or chromium-browser on PATH")]


def _load_tour():
    """``examples/mlflow_ui_tour.py``, whose server and process-group helpers this test shares."""
    path = Path(__file__).resolve().parents[1] / "examples" / "mlflow_ui_tour.py"
    spec = importlib.util.spec_from_file_location("mlflow_ui_tour", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


TOUR = _load_tour()


@pytest.fixture
def mlflow_ui():
    """Factory: ``mlflow server`` for a store on a free port; its base URL. Stopped however the test ends."""
    with contextlib.ExitStack() as servers:
        def start(tracking_uri: str, log: Path) -> str:
            return servers.enter_context(TOUR.mlflow_server(tracking_uri, TOUR.free_port(), log, timeout=60))

        yield start


def _rendered(url: str, profile: Path) -> str:
    """The page's DOM after Chromium has run its scripts and fetched its data (10 s of virtual time)."""
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                             "--window-size=1400,1200", "--virtual-time-budget=10000", "--dump-dom", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        dom, errors = proc.communicate(timeout=90)
    finally:
        TOUR.stop_group(proc)  # the browser's helper processes too, should it hang
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
