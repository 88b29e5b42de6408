"""A third-party objective installs, trains on both backends from a spec and tests itself — plmforge untouched.

Both the example package (``examples/plmforge-objective-example``) and the tutorial's package (its files
are the code blocks of ``docs/writing-an-objective.md``) are pip-installed into a temporary folder
with ``--target``; subprocesses see them through ``PYTHONPATH``, so ``importlib.metadata`` finds their
entry points while the running environment stays as it was.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "plmforge-objective-example"
TUTORIAL = REPO / "docs" / "writing-an-objective.md"
BUILD_LEFTOVERS = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "runs", "mlflow.db", ".pytest_cache")


def pip_install(source: Path, site: Path) -> None:
    """Install ``source`` into ``site`` offline, with the running environment's setuptools (no isolation)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("installing a package without build isolation needs setuptools in this environment")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "-q", "--target", str(site), str(source)]
    out = subprocess.run(command, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def environment(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PLMFORGE_DISABLE_PLUGINS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return env


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)}\n{out.stdout}\n{out.stderr}"
    return out


def plugins(env: dict[str, str], cwd: Path) -> list[dict]:
    return json.loads(run(["-m", "plmforge.core.cli", "plugins", "--json"], env, cwd).stdout)


def mlflow_runs(db: Path, experiment: str) -> list:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """(working directory, environment) with the example package installed; the source is copied first
    so the build leaves nothing in the repository."""
    root = tmp_path_factory.mktemp("example")
    shutil.copytree(EXAMPLE, root / "source", ignore=BUILD_LEFTOVERS)
    pip_install(root / "source", root / "site")
    return root, environment(root / "site")


def test_plmforge_lists_the_installed_example_with_its_distribution(example):
    root, env = example
    rows = {(r["kind"], r["name"]): r for r in plugins(env, root)}
    row = rows[("objective", "span_shuffle")]
    assert (row["distribution"], row["version"], row["status"]) == ("plmforge-objective-example", "0.1.0", "loaded")
    assert ("objective", "span_shuffle") not in {(r["kind"], r["name"]) for r in plugins(environment(root / "none"),
                                                                                       root)}


def test_the_example_spec_trains_on_both_backends_into_mlflow(example):
    root, env = example
    db = root / "mlflow.db"
    backends = ["torch", *(["jax"] if importlib.util.find_spec("jax") else [])]
    for backend in backends:
        out = run(["-m", "plmforge.core.cli", "train", str(root / "source" / "spec.yaml"), "--no-progress",
                   "--set", f"backend.name={backend}", "--set", f"output_dir={root / 'runs' / backend}",
                   "--set", f"tracking.tracking_uri=sqlite:///{db}", "--set", "data.max_length=64",
                   "--set", "training.steps=6", "--set", "training.log_every=3", "--set", "training.eval_every=6",
                   "--set", "training.eval_batches=2", "--set", "training.checkpoint_every=6"], env, root)
        assert "finished 6 steps of 'span-shuffle'" in out.stdout
        assert "val/span_shuffle/accuracy" in out.stdout
    runs = {r.data.tags["plmforge.backend"]: r for r in mlflow_runs(db, "span-shuffle")}
    assert sorted(runs) == sorted(backends)
    for backend, found in runs.items():
        assert found.info.status == "FINISHED"
        assert found.data.tags["plmforge.plugin.objective.span_shuffle"] == "plmforge-objective-example 0.1.0"
        assert found.data.params["objectives.0.shuffled_fraction"] == "0.15"
        metrics = found.data.metrics
        for key in ("train/span_shuffle/loss", "train/span_shuffle/accuracy", "train/span_shuffle/moved_rate",
                    "val/span_shuffle/loss", "val/span_shuffle/accuracy", "val/span_shuffle/moved_recall"):
            assert key in metrics, (backend, key)
        assert 0.0 < metrics["val/span_shuffle/loss"] < 1.0  # binary cross-entropy in nats, from ~0.7 down
        assert 0.05 < metrics["val/span_shuffle/moved_rate"] < 0.15  # 15 % shuffled, some land on equal residues
    if len(runs) == 2:  # same spec and seed: the same first steps on PyTorch and JAX
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        first = {b: client.get_metric_history(r.info.run_id, "train/span_shuffle/loss")[0] for b, r in runs.items()}
        assert first["jax"].step == first["torch"].step == 3
        assert first["jax"].value == pytest.approx(first["torch"].value, rel=1e-3)


def test_the_examples_own_tests_pass_with_plmforge_testing(example):
    root, env = example
    out = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "source" / "tests")], env, root)
    assert re.search(r"\b6 passed\b", out.stdout), out.stdout


# -- the tutorial, block by block ------------------------------------------------------------------------
def tutorial_files() -> dict[str, str]:
    """The tutorial's files: each code block introduced by a line "`path`:"."""
    return dict(re.findall(r"`([^`\n]+)`:\n\n```[a-z]*\n(.*?)```", TUTORIAL.read_text(), re.S))


def test_the_tutorial_package_installs_tests_trains_and_shows_up_in_mlflow(tmp_path):
    files = tutorial_files()
    assert sorted(files) == ["pyproject.toml", "substitution.yaml", "substitution/objective.py",
                             "tests/test_objective.py"]
    package = tmp_path / "plmforge-substitution"
    (package / "substitution").mkdir(parents=True)
    (package / "substitution" / "__init__.py").touch()  # the tutorial's `touch`
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    pip_install(package, tmp_path / "site")
    env = environment(tmp_path / "site")

    row = next(r for r in plugins(env, package) if r["name"] == "substitution")
    assert (row["distribution"], row["status"]) == ("plmforge-substitution", "loaded")
    # from outside the package folder, so the tests import the installed copy
    out = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")], env, tmp_path)
    assert re.search(r"\b2 passed\b", out.stdout), out.stdout
    validated = run(["-m", "plmforge.core.cli", "validate", "substitution.yaml"], env, package).stdout
    assert validated in TUTORIAL.read_text()  # the tutorial shows exactly what `validate` prints
    run(["-m", "plmforge.core.cli", "train", "substitution.yaml", "--no-progress", "--set", "training.steps=2",
         "--set", "training.eval_every=2", "--set", "training.eval_batches=1"], env, package)
    snippet = re.search(r"The same from Python:\n\n```python\n(.*?)```", TUTORIAL.read_text(), re.S).group(1)
    shown = run(["-c", snippet], env, package).stdout  # in the folder where `plmforge train` made mlflow.db
    assert "torch" in shown and "0.15" in shown
