"""`plmforge compare`: runs side by side from MLflow, written directly with MlflowClient (one slow test trains
seed replicates for real)."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
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
    # cross-entropies: an ending, not a substring (``variance``, ``confidence`` hold "ce")
    assert lower_is_better("val/mlm/masked_residue_ce") and lower_is_better("val/s2s/completion_ce")
    assert lower_is_better("task/x/confidence") is False


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
    uri, ids = store
    out = cli("--tracking-uri", uri, "-e", "sweep", "--metric", "val/*", "--metric", "task/*/accuracy",
              "--metric", "nothing/*", "--format", "csv")
    assert out.exit_code == 0, out.output
    (header,) = csv.reader(io.StringIO(out.stdout.splitlines()[0]))
    assert header == ["run", "run_id", "experiment", "model.d_model", "training.optimizer.lr", "val/loss",
                      "task/localization/accuracy"]
    assert "no logged metric matches 'nothing/*'" in out.stderr
    refs = cli("--tracking-uri", uri, "-e", "sweep", "--references", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(refs.stdout)))
    assert not [key for key in rows[0] if key.startswith("reference/")]  # references are rows, not columns
    # two parents logged the same one-hot score: one row, in the model's task column, no params, kind reference
    assert [r["run"] for r in rows] == ["lr-small", "lr-large", "lr-small-wide", "reference: onehot"]
    onehot = rows[-1]
    assert onehot["kind"] == "reference" and float(onehot["task/localization/accuracy"]) == 0.40
    assert onehot["run_id"] == ids["small"] and onehot["training.optimizer.lr"] == "" and onehot["train/loss"] == ""


def test_param_patterns_choose_the_param_columns(store):
    uri, _ = store

    def header(*args):
        out = cli("--tracking-uri", uri, "-e", "sweep", "--metric", "val/loss", "--format", "csv", *args)
        assert out.exit_code == 0, out.output
        return next(csv.reader(io.StringIO(out.stdout)))

    assert header() == ["run", "run_id", "experiment", "model.d_model", "training.optimizer.lr", "val/loss"]
    assert header("--param", "model.*") == ["run", "run_id", "experiment", "model.d_model", "val/loss"]
    assert header("--param", "*.lr", "--param", "seed") == ["run", "run_id", "experiment", "training.optimizer.lr",
                                                           "val/loss"]  # seed: the same everywhere, not shown
    assert header("--no-params") == ["run", "run_id", "experiment", "val/loss"]
    both = cli("--tracking-uri", uri, "-e", "sweep", "--param", "x", "--no-params")
    assert both.exit_code == 2 and "not both" in both.output


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


# -- uncertainty: intervals, paired significance, baseline differences, seed replicates ------------------------

PROTEINS = 40
RESAMPLES = 400


def outcomes_of(per_protein: dict[str, np.ndarray], ids: list[str] | None = None, seed: int = 0):
    """Outcomes of per-protein scores (metric = mean over proteins), bootstrapped as the evaluation does:
    the same n, B and seed give the same resamples, so two runs' distributions are paired."""
    from plmforge.core.uncertainty import Outcomes, bootstrap_metrics

    names = list(per_protein)
    table = np.stack([per_protein[name] for name in names], axis=1)  # [n, M]

    def statistic(indices, axis=-1):
        return np.moveaxis(table[indices].mean(axis=-2), -1, 0)  # [B, n, M] -> [M, B]

    n = len(table)
    low, high, replicates = bootstrap_metrics(statistic, n, RESAMPLES, seed, 0.95, vectorized=True)
    return Outcomes(np.array(ids or [f"p{i}" for i in range(n)]), names, table.mean(axis=0), low, high, replicates,
                    RESAMPLES, seed, 0.95, 1)


def log_evaluated(client, experiment_id, name, tmp_path, tasks, params=None, tags=None, artifacts=True, loss=2.0):
    """A parent run with task metrics, their _ci bounds and (``artifacts``) outcomes/<task>/model.npz files."""
    from mlflow.entities import Metric, Param, RunTag

    from plmforge.core.uncertainty import write_outcomes

    run_id = client.create_run(experiment_id, run_name=name, tags={"plmforge.kind": "pretrain", **(tags or {})}
                               ).info.run_id
    metrics = []
    for task, outcome in tasks.items():
        for metric in outcome.metric_names:
            point, low, high = outcome.interval(metric)
            metrics += [Metric(f"task/{task}/{metric}", point, 0, 0), Metric(f"task/{task}/{metric}_ci_low", low, 0, 0),
                        Metric(f"task/{task}/{metric}_ci_high", high, 0, 0)]
        if artifacts:
            folder = tmp_path / run_id / task
            write_outcomes(folder / "model.npz", outcome)
            client.log_artifact(run_id, str(folder / "model.npz"), f"outcomes/{task}")
    metrics.append(Metric("train/loss", loss, 0, 5))
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in (params or {}).items()],
                     tags=[RunTag("plmforge.backend", "torch")])
    client.set_terminated(run_id)
    return run_id


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Experiment 'paired': A; B = A + 0.03 on every protein (a small, consistent gain: significant only paired);
    C = A + noise (a tie); D like B but logged before outcomes existed (no artifacts). Experiment 'seeds': three
    replicates of one spec (tagged) and one of another spec."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("scored")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.9, PROTEINS)  # proteins differ a lot: unpaired intervals are wide
    loc = rng.integers(0, 2, PROTEINS).astype(float)
    ids = {}
    paired = client.create_experiment("paired")
    ids["a"] = log_evaluated(client, paired, "arm-a", tmp_path, {
        "ss3": outcomes_of({"q3": base}), "loc": outcomes_of({"accuracy": loc})}, params={"arm": "a"}, loss=2.2)
    ids["b"] = log_evaluated(client, paired, "arm-b", tmp_path, {
        "ss3": outcomes_of({"q3": base + 0.03 + rng.normal(0, 0.005, PROTEINS)}),
        "loc": outcomes_of({"accuracy": np.where(np.arange(PROTEINS) < 2, 1.0, loc)})}, params={"arm": "b"},
        loss=2.1)
    ids["c"] = log_evaluated(client, paired, "arm-c", tmp_path, {
        "ss3": outcomes_of({"q3": base + rng.normal(0, 0.05, PROTEINS)})}, params={"arm": "c"})
    ids["d"] = log_evaluated(client, paired, "arm-d-old", tmp_path, {
        "ss3": outcomes_of({"q3": base + 0.031})}, params={"arm": "d"}, artifacts=False)

    seeds = client.create_experiment("seeds")
    for seed, shift in zip((0, 1, 2), (0.0, 0.02, 0.04)):
        tags = {"plmforge.replicate_group": "g1", "plmforge.seed": str(seed), "plmforge.spec_name": "tiny"}
        ids[f"s{seed}"] = log_evaluated(client, seeds, f"tiny seed {seed}", tmp_path, {
            "ss3": outcomes_of({"q3": base + shift})}, params={"name": "tiny", "seed": str(seed), "lr": "0.001"},
            tags=tags)
    ids["other"] = log_evaluated(client, seeds, "other", tmp_path, {"ss3": outcomes_of({"q3": base})},
                                 params={"name": "other", "seed": "0", "lr": "0.003"},
                                 tags={"plmforge.replicate_group": "g2", "plmforge.seed": "0"})
    return uri, ids


def cells(output: str, name: str) -> list[str]:
    """The cells of the table row of ``name`` (rich's box characters split them)."""
    (line,) = [line for line in output.splitlines() if line.startswith("│") and f" {name} (" in line]
    return [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]


def column(output: str, header: str) -> int:
    line = next(line for line in output.splitlines() if "run" in line and header in line)
    return [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]].index(header)


def test_intervals_in_cells_and_significance_paired_on_the_same_proteins(scored):
    uri, ids = scored
    out = cli("--tracking-uri", uri, "-e", "paired")
    assert out.exit_code == 0, out.output
    text = out.stdout
    header = text.splitlines()[1]
    assert "task/ss3/q3" in header and "_ci_" not in header  # bounds are folded into their column
    q3, acc = column(text, "task/ss3/q3"), column(text, "task/loc/accuracy")
    a, b, c = cells(text, "arm-a"), cells(text, "arm-b"), cells(text, "arm-c")
    assert re.fullmatch(r"0\.\d{4} \[0\.\d{3}, 0\.\d{3}\][*≈]?", a[q3]), a[q3]
    # D (no outcomes) is best by a hair; compared with it unpaired, every interval overlaps: all tied
    assert all(cells(text, name)[q3].endswith("≈") for name in ("arm-a", "arm-b", "arm-c", "arm-d-old"))
    assert "unpaired: no per-protein outcomes for run arm-d-old" in text
    # loc: B gains 2 of 40 proteins only: not significant, a tie of A and B
    assert a[acc].endswith("≈") and b[acc].endswith("≈")
    assert "not significantly different from the best" in text
    assert "1.0000" not in c[acc]  # C logged no loc metric: missing
    # without the old run, B is significantly best (paired), though its interval overlaps A's
    pair = cli("--tracking-uri", uri, "--runs", ids["a"], ids["b"], ids["c"])
    b = cells(pair.stdout, "arm-b")
    assert b[q3].endswith("*") and "unpaired" not in pair.stdout, pair.stdout
    low_b = float(b[q3].split("[")[1].split(",")[0])
    high_a = float(cells(pair.stdout, "arm-a")[q3].split(", ")[1].rstrip("] "))
    assert low_b < high_a  # overlapping intervals: only the pairing makes the difference significant
    assert "* best in column, significantly better than every other row" in pair.stdout
    assert "2.0000*" in cells(pair.stdout, "arm-c")  # train/loss (no intervals) keeps the plain mark


def test_baseline_adds_paired_differences(scored):
    uri, ids = scored
    out = cli("--tracking-uri", uri, "-e", "paired", "--baseline", ids["a"][:8])
    assert out.exit_code == 0, out.output
    text = out.stdout
    q3 = column(text, "task/ss3/q3")
    assert "(baseline)" in next(line for line in text.splitlines() if "arm-a" in line)
    (delta_b,) = [line for line in text.splitlines() if "Δ arm-b" in line]
    diff = [c.strip() for c in re.split(r"[│┃|]", delta_b)[1:-1]][q3]
    value, low, high = (float(x) for x in re.fullmatch(r"([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\]", diff).groups())
    assert 0.025 < value < 0.035 and 0 < low < value < high < 0.04  # paired: tight around +0.03
    (delta_d,) = [line for line in text.splitlines() if "Δ arm-d-old" in line]
    diff_d = [c.strip() for c in re.split(r"[│┃|]", delta_d)[1:-1]][q3]
    assert diff_d.endswith("†") and float(diff_d.split("[")[1].split(",")[0]) < 0  # unpaired: wide, spans 0
    assert not [line for line in text.splitlines() if "Δ arm-a" in line]
    assert "Δ rows: difference to the baseline arm-a" in text
    rows = list(csv.DictReader(io.StringIO(
        cli("--tracking-uri", uri, "-e", "paired", "--baseline", ids["a"], "--format", "csv").stdout)))
    b_row = next(r for r in rows if r["run"] == "arm-b")
    assert b_row["task/ss3/q3_delta_paired"] == "true" and float(b_row["task/ss3/q3_delta_low"]) > 0
    assert next(r for r in rows if r["run"] == "arm-d-old")["task/ss3/q3_delta_paired"] == "false"
    assert float(b_row["task/ss3/q3_ci_low"]) < float(b_row["task/ss3/q3"]) < float(b_row["task/ss3/q3_ci_high"])
    assert not any(key.endswith("_ci_low_ci_low") for key in b_row)
    unknown = cli("--tracking-uri", uri, "-e", "paired", "--baseline", "ffffffff")
    assert unknown.exit_code == 1 and "unknown run id 'ffffffff'" in unknown.output


def test_seed_replicates_are_pooled(scored):
    uri, ids = scored
    out = cli("--tracking-uri", uri, "-e", "seeds")
    assert out.exit_code == 0, out.output
    text = out.stdout
    q3 = column(text, "task/ss3/q3")
    pooled = [c.strip() for c in re.split(r"[│┃|]", next(line for line in text.splitlines()
                                                          if "tiny [seeds 0,1,2]" in line))[1:-1]]
    mean, sd, low, high = (float(x) for x in re.match(r"([\d.]+) ± ([\d.]+) \[([\d.]+), ([\d.]+)\]",
                                                       pooled[q3]).groups())
    single = [float(x) for x in re.findall(r"[\d.]+", cells(text, "other")[q3])[:3]]
    assert abs(sd - 0.02) < 1e-3 and abs(mean - (single[0] + 0.02)) < 1e-3
    assert high - low > single[2] - single[1]  # the pooled interval includes the seed spread
    assert "tiny seed" not in text and len([line for line in text.splitlines() if "│" in line]) == 2
    assert "seed replicates pooled" in text
    listed = cli("--tracking-uri", uri, "-e", "seeds", "--replicates").stdout
    apart = cli("--tracking-uri", uri, "-e", "seeds", "--no-group").stdout
    assert len([line for line in apart.splitlines() if line.startswith("│")]) == 4 and "[seeds" not in apart
    assert all(f"└ seed {s}: tiny seed {s}" in listed for s in (0, 1, 2))
    rows = list(csv.DictReader(io.StringIO(cli("--tracking-uri", uri, "-e", "seeds", "--format", "csv").stdout)))
    assert [r["seeds"] for r in rows] == ["0;1;2", "0"] and rows[0]["task/ss3/q3_n"] == "3"
    assert rows[0]["run_id"] == ";".join(ids[f"s{s}"] for s in range(3))
    base = cli("--tracking-uri", uri, "-e", "seeds", "--baseline", ids["s1"]).stdout  # a replicate: its group
    assert "is a seed replicate" in base and "Δ other" in base


def test_grouping_and_marks_as_data():
    from plmforge.core.compare import replicate_group

    params = {"name": "x", "seed": "0", "output_dir": "runs/x", "tracking.run_name": "a", "lr": "1"}
    same = {**params, "seed": "1", "output_dir": "runs/x/seed-1", "tracking.run_name": "x seed 1"}
    assert replicate_group(params) == replicate_group(same) != replicate_group({**params, "lr": "2"})

    def run(name, seed, tags=None, **metrics):
        return RunSummary(run_id=name * 4, name=name, experiment="e", params={**params, "seed": seed},
                          metrics=metrics, tags=tags or {})

    tagged = {"plmforge.replicate_group": replicate_group(params), "plmforge.seed": "2"}
    comparison = build_comparison([run("a", "0", **{"val/loss": 2.0}), run("b", "1", **{"val/loss": 1.0}),
                                   run("c", "2", tagged, **{"val/loss": 3.0})])  # tag and params agree
    (pooled,) = comparison.runs
    assert [m.name for m in pooled.members] == ["a", "b", "c"] and comparison.values("val/loss") == [2.0]
    assert comparison.spread[0, comparison.index("val/loss")] == (1.0, 3)
    rerun = build_comparison([run("a", "0", **{"val/loss": 2.0}), run("b", "0", **{"val/loss": 1.0})])
    assert len(rerun.runs) == 2 and any("reruns, not replicates" in n for n in rerun.notes)
    apart = build_comparison([run("a", "0"), run("b", "1")], group=False)
    assert len(apart.runs) == 2


def test_plot_draws_intervals_references_and_pooled_rows(scored, tmp_path):
    uri, _ = scored
    path = tmp_path / "seeds.png"
    out = cli("--tracking-uri", uri, "-e", "seeds", "--references", "--plot", str(path))
    assert out.exit_code == 0 and path.read_bytes()[:8] == PNG


@pytest.mark.slow
def test_train_seeds_runs_replicates_that_compare_pools(tmp_path):
    """A real ``train --seeds 0-1`` of a tiny spec: two runs, tagged as one group, pooled by compare."""
    import yaml
    from helpers import tiny_spec_dict
    from mlflow.tracking import MlflowClient

    from plmforge.core.compare import replicate_group

    spec = tiny_spec_dict(tmp_path, steps=2, eval_every=2, checkpoint_every=2)
    spec["tracking"]["log_checkpoint"] = False
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = CliRunner().invoke(main, ["train", str(path), "--seeds", "0-1", "--no-progress"])
    assert out.exit_code == 0, out.output
    assert "replicate seed 1 (2/2): training" in out.output and "2 replicate(s) of 'tiny' trained" in out.output
    for seed in (0, 1):
        assert (tmp_path / "run" / f"seed-{seed}" / "checkpoints" / "step-000002").is_dir()
    uri = spec["tracking"]["tracking_uri"]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                              order_by=["attributes.start_time ASC"])
    assert [r.info.run_name for r in runs] == ["tiny seed 0", "tiny seed 1"]
    assert [r.data.tags["plmforge.seed"] for r in runs] == ["0", "1"]
    groups = {r.data.tags["plmforge.replicate_group"] for r in runs}
    assert groups == {replicate_group(runs[0].data.params)}  # a run logged without the tag groups the same
    table = cli("--tracking-uri", uri, "-e", "tests").stdout
    (pooled,) = [line for line in table.splitlines() if "tiny [seeds 0,1]" in line]
    assert pooled.count("±") == 2, table  # train/loss and val/loss: mean ± sd over the two seeds
    again = CliRunner().invoke(main, ["train", str(path), "--seeds", "0,1", "--resume", "--no-progress"])
    assert again.exit_code == 0 and again.output.count("already finished, skipped") == 2, again.output
    fresh = CliRunner().invoke(main, ["train", str(path), "--seeds", "1,0", "--no-progress"])
    assert fresh.exit_code == 1 and "replicate seed 1" in fresh.output and "already holds checkpoints" in fresh.output
    assert "continue with --seeds 1,0 --resume" in fresh.output
    bad = CliRunner().invoke(main, ["train", str(path), "--seeds", "2-1"])
    assert bad.exit_code == 1 and "runs backwards" in bad.output


# -- references: on the parent (old runs) or on their own task child runs (now) --------------------------------


def interval_metrics(prefix: str, outcome) -> list:
    from mlflow.entities import Metric

    out = []
    for metric in outcome.metric_names:
        point, low, high = outcome.interval(metric)
        out += [Metric(f"{prefix}/{metric}", point, 0, 0), Metric(f"{prefix}/{metric}_ci_low", low, 0, 0),
                Metric(f"{prefix}/{metric}_ci_high", high, 0, 0)]
    return out


def log_task_child(client, experiment_id, parent, task, reference, outcome, layout):
    """A task child run as ``evaluate`` logs it: now ``task/<label>/...`` names (the model's and a reference's
    alike), before ``test/...`` and ``validation/...``."""
    from mlflow.entities import Metric

    tags = {"plmforge.kind": "task", "plmforge.task": task, "plmforge.reference": reference,
            "mlflow.parentRunId": parent}
    name = f"{task}·{reference} {parent[:6]}" if layout == "new" else f"{task} [{reference}]"
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    head = f"task/{task}/head" if layout == "new" else "head"
    metrics = [Metric(f"{head}/loss", 1.0 / epoch, 0, epoch) for epoch in (1, 2, 3)]
    if layout == "new":
        metrics += interval_metrics(f"task/{task}", outcome)
        metrics += [Metric(f"task/{task}/validation/{m}", 0.99, 0, 0) for m in outcome.metric_names]
        metrics += [Metric(f"task/{task}/{m}_head_sd", 0.01, 0, 0) for m in outcome.metric_names]
        metrics += [Metric(f"task/{task}/time/fit_seconds", 2.0, 0, 0),
                    Metric(f"task/{task}/head/best_epoch", 3.0, 0, 0)]
    else:
        metrics += [Metric(f"test/{m}", outcome.interval(m)[0], 0, 0) for m in outcome.metric_names]
    client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id)
    return run_id


def log_parent(client, experiment_id, name, tmp_path, layout, model, references, params, tags):
    """A pretraining parent with one task (ss3): the model's metrics and the outcomes files on the parent; the
    references' metrics on the parent (``old``) or only on their child runs (``new``)."""
    from mlflow.entities import Param, RunTag

    from plmforge.core.uncertainty import write_outcomes

    run_id = client.create_run(experiment_id, run_name=name, tags={"plmforge.kind": "pretrain", **tags}).info.run_id
    metrics = interval_metrics("task/ss3", model)
    for representation, outcome in {"model": model, **references}.items():
        write_outcomes(tmp_path / run_id / f"{representation}.npz", outcome)
        client.log_artifact(run_id, str(tmp_path / run_id / f"{representation}.npz"), "outcomes/ss3")
        if representation != "model" and layout == "old":
            metrics += interval_metrics(f"reference/{representation}/ss3", outcome)
        log_task_child(client, experiment_id, run_id, "ss3", representation, outcome, layout)
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag("plmforge.backend", "torch")])
    client.set_terminated(run_id)
    return run_id


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same three parents (two seed replicates of lr 0.001, one run of lr 0.003) in experiment ``old``
    (references on the parent) and ``new`` (references on their child runs); ``mixed``: a parent that logged a
    reference itself and also has a child run logging another value of it."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("layouts")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    rng = np.random.default_rng(2)
    base = rng.uniform(0.3, 0.9, PROTEINS)
    onehot = outcomes_of({"q3": base - 0.1, "macro_f1": base - 0.2})  # the same in every run
    arms = [("lr-a seed 0", "0.001", "0", 0.00), ("lr-a seed 1", "0.001", "1", 0.02), ("lr-b", "0.003", "0", 0.05)]
    scores = [(outcomes_of({"q3": base + shift, "macro_f1": base - 0.1 + shift}),
               outcomes_of({"q3": base - 0.15 + rng.normal(0, 0.01, PROTEINS),  # random init: differs by run
                            "macro_f1": base - 0.3 + rng.normal(0, 0.01, PROTEINS)}))
              for *_, shift in arms]
    ids: dict[str, dict[str, str]] = {}
    for layout in ("old", "new"):
        experiment = client.create_experiment(layout)
        ids[layout] = {}
        for (name, lr, seed, _), (model, random) in zip(arms, scores):
            ids[layout][name] = log_parent(
                client, experiment, name, tmp_path / layout, layout, model, {"onehot": onehot, "random": random},
                params={"name": name.split()[0], "seed": seed, "training.optimizer.lr": lr},
                tags={"plmforge.replicate_group": f"g{lr}", "plmforge.seed": seed})
    mixed = client.create_experiment("mixed")
    ids["mixed"] = {"parent": log_parent(client, mixed, "both", tmp_path / "mixed", "old", scores[0][0],
                                         {"onehot": onehot}, params={}, tags={})}
    log_task_child(client, mixed, ids["mixed"]["parent"], "ss3", "onehot", scores[2][0], "new")
    return uri, ids


def normalized(text: str, ids: dict[str, str], experiment: str) -> str:
    for name, run_id in ids.items():
        text = text.replace(run_id, f"<{name}>").replace(run_id[:8], f"<{name}>")
    return text.replace(f",{experiment},", ",<experiment>,")  # csv's experiment column


def test_references_from_child_runs_give_the_table_of_references_on_the_parent(layouts):
    uri, ids = layouts
    outputs = {}
    for layout in ("old", "new"):
        base = ids[layout]["lr-b"]
        for fmt in ("table", "csv", "markdown"):
            out = cli("--tracking-uri", uri, "-e", layout, "--references", "--baseline", base[:8], "--format", fmt,
                      "--replicates")
            assert out.exit_code == 0, out.output
            outputs[layout, fmt] = normalized(out.stdout, ids[layout], layout)
    for fmt in ("table", "csv", "markdown"):
        assert outputs["old", fmt] == outputs["new", fmt], fmt
    text, table = outputs["new", "csv"], outputs["new", "table"]
    (header,) = csv.reader(io.StringIO(text.splitlines()[0]))
    for key in ("kind", "task/ss3/q3", "task/ss3/macro_f1", "task/ss3/q3_ci_low", "task/ss3/q3_delta_paired"):
        assert key in header, key
    child_only = ("validation", "head_sd", "/time/", "/head/")
    assert not [key for key in header if any(part in key for part in child_only) or key.startswith("ref")]
    assert "ss3·" not in table and "[onehot]" not in table  # child runs are no rows
    rows = list(csv.DictReader(io.StringIO(text)))
    # pooled arms and their replicates, then the references: one-hot (the same in every run) once; random init
    # (different in every run) pooled over the seeds of lr-a like its parents, and lr-b's apart
    assert [r["run"] for r in rows] == ["lr-a", "lr-a seed 0", "lr-a seed 1", "lr-b", "reference: onehot",
                                        "reference: random · lr-a", "reference: random", "reference: random",
                                        "reference: random · lr-b"]
    assert [r["kind"] for r in rows] == ["pretrain"] * 4 + ["reference"] * 5
    assert all(r["training.optimizer.lr"] == "" for r in rows[4:])  # no params on reference rows
    onehot, random_a, random_b = rows[4], rows[5], rows[8]
    assert onehot["run_id"] == "<lr-a seed 0>" and random_a["run_id"] == "<lr-a seed 0>;<lr-a seed 1>"
    assert random_a["seeds"] == "0;1" and random_a["task/ss3/q3_n"] == "2" and random_a["task/ss3/q3_sd"]
    assert random_a["task/ss3/q3_delta_paired"] == "true"  # outcomes files on the parent: paired to lr-b
    assert float(onehot["task/ss3/q3_ci_low"]) < float(onehot["task/ss3/q3"]) < float(onehot["task/ss3/q3_ci_high"])
    assert onehot["task/ss3/q3_sd"] == "" and random_b["task/ss3/q3_delta_paired"] == "true"
    assert float(onehot["task/ss3/q3"]) < float(rows[3]["task/ss3/q3"])  # lr-b: base + 0.05, one-hot: base - 0.1
    assert "reference: random · lr-a [seeds 0,1]" in table and "└ seed 1: reference: random (<lr-a seed 1>)" in table


def test_references_are_fetched_with_one_search_per_experiment(layouts):
    from plmforge.core.compare import RunSource

    uri, ids = layouts
    source = RunSource(uri)
    searches = []
    search = source.client.search_runs
    source.client.search_runs = lambda *a, **k: searches.append(a) or search(*a, **k)
    new = source.select(["new"])
    assert len(searches) == 2  # the parents, then all their reference child runs
    old = RunSource(uri).select(["old"])
    assert [sorted(r.metrics) for r in new] == [sorted(r.metrics) for r in old]
    assert [[r.metrics[k] for k in sorted(r.metrics)] for r in new] == [[r.metrics[k] for k in sorted(r.metrics)]
                                                                      for r in old]
    (latest,) = RunSource(uri).select(["new"], limit=1)  # only children started after the parents asked for
    assert latest.name == "lr-b" and "reference/onehot/ss3/q3_ci_high" in latest.metrics
    (both,) = RunSource(uri).select(run_ids=[ids["mixed"]["parent"]])
    own = source.client.get_run(ids["mixed"]["parent"]).data.metrics["reference/onehot/ss3/q3"]
    assert both.metrics["reference/onehot/ss3/q3"] == own  # a parent's own reference metrics win over a child's


def test_task_child_runs_by_id_show_their_task_metrics(layouts):
    from mlflow.tracking import MlflowClient

    uri, ids = layouts
    client = MlflowClient(tracking_uri=uri)
    children = client.search_runs([client.get_experiment_by_name("new").experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{ids['new']['lr-b']}'")
    by_reference = {run.data.tags["plmforge.reference"]: run.info.run_id for run in children}
    out = cli("--tracking-uri", uri, by_reference["model"], by_reference["onehot"][:8], "--format", "csv")
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["run"] for r in rows] == [f"ss3·model {ids['new']['lr-b'][:6]}", f"ss3·onehot {ids['new']['lr-b'][:6]}"]
    for key in ("task/ss3/q3", "task/ss3/q3_ci_low", "task/ss3/validation/q3", "task/ss3/q3_head_sd"):
        assert all(r[key] for r in rows), key
    assert "log none of the metrics" not in out.stderr
    table = cli("--tracking-uri", uri, by_reference["model"], by_reference["onehot"]).stdout
    sd, q3 = column(table, "task/ss3/q3_head_sd"), column(table, "task/ss3/q3")
    model, onehot = (cells(table, f"ss3·{r} {ids['new']['lr-b'][:6]}") for r in ("model", "onehot"))
    assert not model[sd].endswith(("*", "≈")) and not onehot[sd].endswith(("*", "≈"))  # a spread: no better
    assert model[q3].endswith("*") and "paired bootstrap" in table and "unpaired" not in table  # parent's outcomes
    old = [run.info.run_id for run in client.search_runs(
        [client.get_experiment_by_name("old").experiment_id], f"tags.`mlflow.parentRunId` = '{ids['old']['lr-b']}'")]
    before = cli("--tracking-uri", uri, *old)  # children logged before: test/..., nothing matches task/*
    assert before.exit_code == 0 and "these are per-task child runs" in before.stderr


@pytest.fixture(scope="module")
def gain(tmp_path_factory):
    """Experiment ``gain``: an evaluation run whose model beats random init by a small, consistent step on every
    protein (significant only paired: the intervals overlap) and is far above one-hot; and a pretraining run."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("gain")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.9, PROTEINS)
    experiment = client.create_experiment("gain")
    pretrained = log_run(client, experiment, "arm", {"name": "arm", "seed": "0"}, {"train/loss": [2.0, 1.5]}, {})
    arm = log_parent(client, experiment, "arm evaluation", tmp_path, "new",
                     outcomes_of({"q3": base + 0.03 + rng.normal(0, 0.005, PROTEINS)}),
                     {"random": outcomes_of({"q3": base}), "onehot": outcomes_of({"q3": base - 0.2})},
                     params={"name": "arm", "seed": "0"}, tags={"plmforge.kind": "evaluation"})
    return uri, {"pretrained": pretrained, "arm": arm}


def test_an_arm_significantly_better_than_a_reference_row_gets_the_mark(gain):
    uri, ids = gain
    out = cli("--tracking-uri", uri, "-e", "gain", "--references", "--kind", "evaluation")
    assert out.exit_code == 0, out.output
    text = out.stdout
    q3 = column(text, "task/ss3/q3")
    arm, random, onehot = (cells(text, name) for name in ("arm evaluation", "reference: random", "reference: onehot"))
    assert arm[q3].endswith("*") and not random[q3].endswith(("*", "≈")) and not onehot[q3].endswith(("*", "≈"))
    assert "unpaired" not in text and "paired bootstrap" in text
    low_arm = float(arm[q3].split("[")[1].split(",")[0])
    high_random = float(random[q3].split(", ")[1].rstrip("]* "))
    assert low_arm < high_random  # overlapping intervals: only the pairing on the same proteins separates them
    assert arm[column(text, "kind")] == "evaluation" and random[column(text, "kind")] == "reference"
    assert "train/loss" not in text.splitlines()[1]  # --kind: the pretraining run is no row
    base = cli("--tracking-uri", uri, "-e", "gain", "--references", "--baseline", "reference:random", "--format", "csv")
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(base.stdout))}
    assert set(rows) == {"arm", "arm evaluation", "reference: random", "reference: onehot"}
    difference = rows["arm evaluation"]
    assert difference["task/ss3/q3_delta_paired"] == "true" and float(difference["task/ss3/q3_delta_low"]) > 0
    assert rows["reference: random"]["task/ss3/q3_delta"] == ""  # the baseline itself
    alone = cli("--tracking-uri", uri, "-e", "gain", "--baseline", "reference:random")
    assert alone.exit_code == 2 and "needs --references" in alone.output


def test_kind_keeps_runs_of_that_kind_and_their_references(gain):
    uri, ids = gain
    pretrain = cli("--tracking-uri", uri, "-e", "gain", "--references", "--kind", "pretrain", "--format", "csv")
    assert [r["run"] for r in csv.DictReader(io.StringIO(pretrain.stdout))] == ["arm"]
    assert "scored no references" in pretrain.stderr
    both = cli("--tracking-uri", uri, "--kind", "pretrain", "--kind", "evaluation", "--format", "csv")
    assert [r["run"] for r in csv.DictReader(io.StringIO(both.stdout))] == ["arm", "arm evaluation"]
    none = cli("--tracking-uri", uri, "-e", "gain", "--kind", "task")  # child runs are never top-level rows
    assert none.exit_code == 0 and "no runs of kind task in 'gain'" in none.output
    assert "kinds there: evaluation, pretrain" in none.output
    by_id = cli("--tracking-uri", uri, "--runs", ids["pretrained"], ids["arm"], "--kind", "evaluation", "--format",
                "csv")
    assert [r["run_id"] for r in csv.DictReader(io.StringIO(by_id.stdout))] == [ids["arm"]]


def test_python_api_compare_has_kinds_params_and_reference_rows(gain):
    import plmforge

    uri, ids = gain
    comparison = plmforge.compare(experiments="gain", references=True, kinds="evaluation", params=[],
                                  metrics=["task/*"], tracking_uri=uri)
    assert comparison.columns == ["run", "kind", "task/ss3/q3"]
    assert [label.split(" (")[0] for label in comparison.rows] == ["arm evaluation", "reference: onehot",
                                                                  "reference: random"]
    assert comparison.run_ids == [ids["arm"]] * 3  # reference rows: the run that scored them
    assert comparison.data.best_rows("task/ss3/q3") == {0}  # paired: the outcomes are read, as on the CLI
