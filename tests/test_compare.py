"""`plmforge compare`: runs side by side from MLflow, written directly with MlflowClient (no training)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from plmforge.core.cli import main
from plmforge.core.compare import RunSummary, build_comparison, lower_is_better
from plmforge.core.tracking import flatten

PNG = b"\x89PNG\r\n\x1a\n"


def spec_params(name: str, lr: float, d_model: int = 32) -> dict[str, str]:
    spec = {"name": name, "seed": 7, "output_dir": f"runs/{name}",
            "model": {"d_model": d_model, "num_layers": 2},
            "backend": {"name": "torch"},
            "objectives": [{"name": "mlm", "probabilities": [0.15, 0.3]}],
            "training": {"steps": 3, "optimizer": {"name": "adamw", "lr": lr, "betas": [0.9, 0.999]}},
            "tracking": {"experiment": "sweep", "tracking_uri": f"sqlite:///{name}.db"}}
    return flatten(spec)


def log_run(client, experiment_id, name, params, curves, final, kind="pretrain", parent=None):
    from mlflow.entities import Metric, Param, RunTag

    tags = {"plmforge.kind": kind}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    metrics = [Metric(key, value, 0, step) for key, values in curves.items() for step, value in enumerate(values, 1)]
    metrics += [Metric(key, value, 0, 0) for key, value in final.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.log_batch(run_id, tags=[RunTag("plmforge.backend", "torch")])
    client.set_terminated(run_id)
    return run_id


def build_store(uri: str) -> dict[str, str]:
    """Experiment sweep: three pretraining runs (one with child task runs), other: one evaluation, empty: none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    sweep = client.create_experiment("sweep")
    ids = {}
    ids["small"] = log_run(client, sweep, "lr-small", spec_params("lr-small", 0.001),
                           {"train/loss": [3.0, 2.5, 2.0], "val/loss": [2.8, 2.2], "train/lr": [0.001] * 3},
                           {"task/secondary_structure/q3": 0.70, "task/localization/accuracy": 0.60,
                            "reference/onehot/localization/accuracy": 0.40})
    for task, value in (("secondary_structure", 0.99), ("localization", 0.98)):
        log_run(client, sweep, f"task-{task}", {}, {}, {"q3": value, f"task/{task}/q3": value},
                kind="task", parent=ids["small"])
    ids["large"] = log_run(client, sweep, "lr-large", spec_params("lr-large", 0.003),
                           {"train/loss": [3.0, 2.0, 1.5], "val/loss": [2.7, 1.9], "train/lr": [0.003] * 3},
                           {"task/secondary_structure/q3": 0.65, "task/localization/accuracy": 0.72,
                            "reference/onehot/localization/accuracy": 0.40})
    ids["wide"] = log_run(client, sweep, "lr-small-wide", spec_params("lr-small-wide", 0.001, d_model=64),
                          {"train/loss": [3.1, 2.6, 2.1], "val/loss": [2.9, 2.3]}, {})
    other = client.create_experiment("other")
    ids["eval"] = log_run(client, other, "eval-small", spec_params("lr-small", 0.001), {},
                          {"task/localization/accuracy": 0.61}, kind="evaluation")
    client.create_experiment("empty")
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('compare') / 'mlflow.db'}"
    return uri, build_store(uri)


def cli(*args: str):
    result = CliRunner().invoke(main, ["compare", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def row(output: str, name: str) -> str:
    (line,) = [line for line in output.splitlines() if f" {name} (" in line]
    return line


def test_table_shows_differing_params_final_metrics_and_best_marks(store):
    uri, ids = store
    out = cli("--tracking-uri", uri, "--experiment", "sweep")
    assert out.exit_code == 0, out.output
    text = out.stdout
    header = text.splitlines()[1]
    for column in ("run", "model.d_model", "training.optimizer.lr", "train/loss", "val/loss",
                   "task/secondary_structure/q3", "task/localization/accuracy"):
        assert column in header, column
    for hidden in ("seed", "backend.name", "output_dir", "tracking.", "objectives.0", "reference/", "experiment",
                   "train/lr"):
        assert hidden not in header, hidden
    assert "task-secondary_structure" not in text and "0.99" not in text  # child runs are no rows
    assert len([line for line in text.splitlines() if " lr-" in line]) == 3
    small, large, wide = row(text, "lr-small"), row(text, "lr-large"), row(text, "lr-small-wide")
    assert ids["small"][:8] in small
    assert "1.5000*" in large and "1.9000*" in large  # lowest losses
    assert "0.7200*" in large and "0.7000*" in small  # highest scores
    assert "*" not in wide and "—" in wide  # no task metrics logged: shown as missing
    assert "0.003 " in large and "64" in wide and "32" in small  # params: as logged
    assert "* best in column" in text
    assert len(max(text.splitlines(), key=len)) > 80  # piped: full width, nothing folded or cut


def test_comparison_as_data():
    def run(name, lr, **metrics):
        return RunSummary(run_id=name * 4, name=name, experiment="x", params={"lr": lr, "name": name, "seed": "1"},
                          metrics=metrics)

    comparison = build_comparison([run("a", "1", **{"val/loss": 2.0, "task/t/acc": 0.5}),
                                   run("b", "2", **{"val/loss": 1.0, "task/t/acc": 0.5}),
                                   run("c", "2", **{"val/loss": float("nan"), "task/t/acc": 0.25}),
                                   run("d", "2", **{"task/u/acc": 0.5})])
    assert [c.key for c in comparison.columns] == ["run", "lr", "val/loss", "task/t/acc", "task/u/acc"]
    assert comparison.values("lr") == ["1", "2", "2", "2"]
    assert comparison.best_rows("val/loss") == {1}  # nan and missing values are never best
    assert comparison.best_rows("task/t/acc") == {0, 1}  # ties: all marked
    assert comparison.values("task/t/acc")[3] is None
    same = build_comparison([run("a", "1", **{"val/loss": 2.0}), run("b", "2", **{"val/loss": 2.0})])
    assert not same.best  # all equal: nothing marked
    single = build_comparison([run("a", "1", **{"val/loss": 2.0})])
    assert [c.key for c in single.columns] == ["run", "val/loss"] and not single.best
    assert lower_is_better("val/mlm/loss") and lower_is_better("task/stability/mse")
    assert lower_is_better("train/KL") and lower_is_better("val/perplexity")
    assert lower_is_better("task/localization/accuracy") is False and lower_is_better("task/contact/P_L") is False
    assert lower_is_better("train/lr") is None


def test_all_experiments_get_an_experiment_column(store, monkeypatch):
    uri, ids = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the default tracking URI
    out = cli("--format", "csv")
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["run"] for r in rows] == ["lr-small", "lr-large", "lr-small-wide", "eval-small"]
    assert {r["experiment"] for r in rows} == {"sweep", "other"}
    assert [r["kind"] for r in rows] == ["pretrain"] * 3 + ["evaluation"]
    table = cli()
    assert "experiment" in table.stdout.splitlines()[1] and "other" in row(table.stdout, "eval-small")


def test_runs_selects_exactly_those_runs_in_order(store):
    uri, ids = store
    out = cli("--tracking-uri", uri, "--runs", ids["eval"], ids["large"][:8])  # full id, short id
    assert out.exit_code == 0, out.output
    lines = [line for line in out.stdout.splitlines() if " (" in line]
    assert [line.split()[1] for line in lines] == ["eval-small", "lr-large"]
    header = out.stdout.splitlines()[1]
    assert "experiment" in header and "training.optimizer.lr" in header and "model.d_model" not in header
    assert "0.7200*" in lines[1]  # accuracy: 0.72 beats 0.61
    same = cli("--tracking-uri", uri, "--runs", f"{ids['eval']},{ids['large']}", "--format", "csv")
    assert [r["run_id"] for r in csv.DictReader(io.StringIO(same.stdout))] == [ids["eval"], ids["large"]]


def test_metric_patterns_replace_the_defaults(store):
    uri, _ = store
    out = cli("--tracking-uri", uri, "-e", "sweep", "--metric", "val/*", "--metric", "task/*/accuracy",
              "--metric", "nothing/*", "--format", "csv")
    assert out.exit_code == 0, out.output
    (header,) = csv.reader(io.StringIO(out.stdout.splitlines()[0]))
    assert header == ["run", "run_id", "experiment", "model.d_model", "training.optimizer.lr", "val/loss",
                      "task/localization/accuracy"]
    assert "no logged metric matches 'nothing/*'" in out.stderr
    refs = cli("--tracking-uri", uri, "-e", "sweep", "--references", "--format", "csv")
    (header,) = csv.reader(io.StringIO(refs.stdout.splitlines()[0]))
    assert header[-1] == "reference/onehot/localization/accuracy" and "train/loss" in header


def test_csv_and_markdown_parse(store):
    uri, ids = store
    out = cli("--tracking-uri", uri, "-e", "sweep", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 3 and rows[1]["run_id"] == ids["large"]
    assert float(rows[1]["train/loss"]) == 1.5 and float(rows[0]["training.optimizer.lr"]) == 0.001
    assert rows[2]["task/localization/accuracy"] == ""  # missing: empty, no marks in csv
    md = cli("--tracking-uri", uri, "-e", "sweep", "--format", "markdown").stdout.splitlines()
    assert len(md) == 5 and all(line.startswith("| ") and line.endswith(" |") for line in md)
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in md]
    assert len({len(c) for c in cells}) == 1
    assert set(cells[1]) <= {"---", "---:"}
    columns = dict(zip(cells[0], zip(*cells[2:])))
    assert columns["train/loss"] == ("2.0000", "**1.5000**", "2.1000")
    assert columns["task/localization/accuracy"] == ("0.6000", "**0.7200**", "—")


def test_no_runs_is_a_message_not_an_error(store, tmp_path):
    uri, _ = store
    out = cli("--tracking-uri", uri, "-e", "empty")
    assert out.exit_code == 0 and "no runs to compare in experiment 'empty'" in out.output
    out = cli()  # default sqlite:///mlflow.db in a folder without one: reported, and not created
    assert out.exit_code == 0 and "no runs to compare" in out.output and "mlflow.db does not exist" in out.output
    assert not Path("mlflow.db").exists()
    from mlflow.tracking import MlflowClient

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    MlflowClient(tracking_uri=fresh).create_experiment("nothing-yet")
    out = cli("--tracking-uri", fresh)
    assert out.exit_code == 0 and "no runs to compare in any experiment" in out.output


def test_unknown_experiment_or_run_is_an_error(store):
    uri, _ = store
    out = cli("--tracking-uri", uri, "--experiment", "nope")
    assert out.exit_code == 1
    assert "error: unknown experiment 'nope'" in out.output and "'sweep'" in out.output
    assert "Traceback" not in out.output
    out = cli("--tracking-uri", uri, "--runs", "0123456789abcdef0123456789abcdef")
    assert out.exit_code == 1 and "unknown run id '0123456789abcdef0123456789abcdef'" in out.output
    out = cli("--tracking-uri", uri, "--runs", "x", "-e", "sweep")
    assert out.exit_code == 1 and "not both" in out.output


def test_plot_writes_a_png(store, tmp_path):
    uri, _ = store
    path = tmp_path / "plots" / "compare.png"
    out = cli("--tracking-uri", uri, "--plot", str(path))
    assert out.exit_code == 0, out.output
    assert path.read_bytes()[:8] == PNG and f"wrote {path}" in out.stderr
    bare = tmp_path / "bare.png"  # nothing to draw in either panel: still a PNG saying so
    out = cli("--tracking-uri", uri, "-e", "other", "--metric", "none", "--plot", str(bare))
    assert out.exit_code == 0 and bare.read_bytes()[:8] == PNG


def test_file_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    root = tmp_path / "mlruns"
    try:
        ids = build_store(str(root))
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"this MLflow has no file store: {exc}")
    for uri in (str(root), root.as_uri()):
        out = cli("--tracking-uri", uri, "-e", "sweep", "--format", "csv")
        assert out.exit_code == 0, out.output
        assert [r["run_id"] for r in csv.DictReader(io.StringIO(out.stdout))] == [ids[k] for k in
                                                                                  ("small", "large", "wide")]
    out = cli("--tracking-uri", str(tmp_path / "missing"))
    assert out.exit_code == 0 and "does not exist" in out.output and not (tmp_path / "missing").exists()


def test_compare_help_imports_no_framework():
    probe = textwrap.dedent("""
        import sys
        from plmforge.core.cli import main
        try:
            main(sys.argv[1:], standalone_mode=False)
        finally:
            print("HEAVY=" + ",".join(m for m in ("torch", "jax", "mlflow", "matplotlib") if m in sys.modules),
                  file=sys.stderr)
        """)
    out = subprocess.run([sys.executable, "-c", probe, "compare", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--tracking-uri" in out.stdout and "HEAVY=\n" in out.stderr, out.stderr


def test_limit_keeps_the_most_recent_runs_oldest_first(store):
    uri, ids = store
    out = cli("--tracking-uri", uri, "--limit", "2", "--format", "csv")
    assert out.exit_code == 0, out.output
    assert [r["run"] for r in csv.DictReader(io.StringIO(out.stdout))] == ["lr-small-wide", "eval-small"]
    sweep = cli("--tracking-uri", uri, "--experiment", "sweep", "-n", "1", "--format", "csv")
    assert [r["run"] for r in csv.DictReader(io.StringIO(sweep.stdout))] == ["lr-small-wide"]
    both = cli("--tracking-uri", uri, "--limit", "1", "--runs", ids["eval"])
    assert both.exit_code != 0 and "--limit picks among an experiment's runs" in both.output
    assert cli("--tracking-uri", uri, "--limit", "0").exit_code != 0  # click: 0 is not in the range
