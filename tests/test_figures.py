"""Task figures as MLflow shows them: named to compare across runs, titled with task, representation and
score, laid out so that a long title or class name never squeezes the plot, logged at the artifact root."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_spec_dict

from plmforge.core.figures import (
    FigureContext,
    confusion_matrix_figure,
    png_title,
    task_figures,
)
from plmforge.core.registry import Registry
from plmforge.core.task import Task, TaskConfig, TaskData, TaskSplit

pytest.importorskip("matplotlib")

SS3 = FigureContext("ss3", "model", "lr=0.002", {"q3": 0.4841, "macro_f1": 0.41}, {"q3": (0.4580, 0.5101)})


def task(name, **options):
    cls = Registry().load("task", name)
    return cls(cls.Config(**options))


def test_context_names_files_and_titles():
    assert SS3.file_name("confusion") == "ss3.model.confusion.png"
    assert SS3.score == "q3 0.484 [0.458, 0.510]"  # the headline: the first test metric, with its interval
    assert SS3.title == "ss3 · model · lr=0.002 — q3 0.484 [0.458, 0.510]"
    assert FigureContext("contact", "onehot", metrics={"long_P_L": 0.0671}).title == "contact · onehot — long_P_L 0.067"
    assert FigureContext("amp", "random", metrics={"mcc": float("nan")}).score == "mcc n/a"
    assert FigureContext("my task/v2", "unirep1900").file_name("map") == "my_task_v2.unirep1900.map.png"


def test_builtin_figures_are_named_and_titled_from_the_context(tmp_path):
    ss = task("secondary_structure")
    data = ss.load()
    test = data.splits["test"]
    logits = [np.eye(3, dtype=np.float32)[np.maximum(y, 0)] * 5 for y in test.labels]
    (matrix,) = ss.figures(logits, test, data, tmp_path, context=SS3)
    assert matrix == tmp_path / "ss3.model.confusion.png"
    assert png_title(matrix) == "ss3 · model · lr=0.002 — q3 0.484 [0.458, 0.510]"
    # without a context (a caller from before it existed): the plugin class titles the picture, as before
    (plain,) = ss.figures(logits, test, data, tmp_path / "plain")
    assert plain.name == "confusion.png" and png_title(plain) == "SecondaryStructure"

    contact = task("contact")
    data = contact.load()
    test = data.splits["test"]
    context = FigureContext("contact", "onehot", "3fa2c1", {"long_P_L": 0.067}, {"long_P_L": (0.04, 0.09)})
    (picture,) = contact.figures([y.astype(np.float32) for y in test.labels], test, data, tmp_path, context=context)
    assert picture.name == "contact.onehot.map.png"
    longest = max(range(len(test)), key=lambda i: len(test.labels[i]))
    assert png_title(picture).startswith("contact · onehot · 3fa2c1 — long_P_L 0.067 [0.040, 0.090]\n")
    assert test.ids[longest] in png_title(picture)



class _Values(Task):
    """A regression task on four proteins, with a ``figures`` override written before the context existed."""

    level = "protein"
    target = "regression"

    def load(self) -> TaskData:
        split = TaskSplit(["a", "b", "c", "d"], ["MKT", "GSA", "PLV", "WYR"],
                          [np.float32(v) for v in (0.1, 0.5, 0.2, 0.9)])
        return TaskData({"train": split, "validation": split, "test": split})

    def figures(self, predictions, split, data, directory):  # the old signature: no context
        return [*super().figures(predictions, split, data, directory), _old_plot(directory / "residuals.png")]


def _old_plot(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n")  # stands for a picture the plugin drew itself
    return path


def test_an_override_without_context_still_gets_the_names_of_the_scheme(tmp_path):
    values = _Values(TaskConfig())
    data = values.load()
    test = data.splits["test"]
    predictions = [np.array([v + 0.1], np.float32) for v in (0.1, 0.5, 0.2, 0.9)]
    context = FigureContext("stability", "onehot", "", {"spearman": 1.0})
    paths = task_figures(values, predictions, test, data, tmp_path / "figures", context)
    assert [p.name for p in paths] == ["stability.onehot.scatter.png", "stability.onehot.residuals.png"]
    assert sorted((tmp_path / "figures").iterdir()) == sorted(paths)  # renamed, not copied
    # a task that takes the context gets it: its own title and names
    ss = task("secondary_structure")
    data = ss.load()
    test = data.splits["test"]
    logits = [np.zeros((len(y), 3), np.float32) for y in test.labels]
    (matrix,) = task_figures(ss, logits, test, data, tmp_path, SS3)
    assert matrix.name == "ss3.model.confusion.png" and png_title(matrix) == SS3.title


def _share(figure, axes):
    """The axes' width, height and area as fractions of the figure's."""
    box = axes.get_position()
    return box.width, box.height, box.width * box.height


def test_long_titles_and_class_names_do_not_squeeze_the_confusion_matrix():
    classes = task("localization").load().classes  # one class name is 63 characters long
    assert max(len(name) for name in classes) > 60
    matrix = np.arange(len(classes) ** 2).reshape(len(classes), len(classes))
    short = confusion_matrix_figure(matrix, classes, "loc · model — accuracy 0.5")
    long_title = " ".join(["localization · a-reference-with-a-very-long-label · lr=0.002, warmup_steps=100"] * 4)
    long = confusion_matrix_figure(matrix, classes, long_title)
    # the plot does not depend on the title: the same size and place whatever its length
    assert tuple(short.get_size_inches()) == tuple(long.get_size_inches())
    assert short.axes[0].get_position().bounds == long.axes[0].get_position().bounds
    width, height, area = _share(long, long.axes[0])
    assert width > 0.55 and height > 0.55 and area > 0.35, (width, height, area)
    # the title stays inside the figure and above the plot
    renderer = long.canvas.get_renderer()
    (title,) = long.texts
    box = title.get_window_extent(renderer)
    figure_box = long.bbox
    plot_box = long.axes[0].get_window_extent(renderer)
    assert box.x0 >= figure_box.x0 and box.x1 <= figure_box.x1 and box.y1 <= figure_box.y1
    assert box.y0 >= plot_box.y1
    # three classes: the matrix keeps its share too
    ss3 = confusion_matrix_figure(np.ones((3, 3)), ["H", "E", "C"], long_title)
    assert _share(ss3, ss3.axes[0])[2] > 0.25


@pytest.mark.slow
def test_figures_are_logged_at_the_artifact_root_of_the_task_run_and_its_parent(tmp_path):
    pytest.importorskip("torch")
    from mlflow.tracking import MlflowClient
    from safetensors.numpy import save_file

    from plmforge.core.evaluation import EvaluationPlan
    from plmforge.core.precomputed import evaluate_embeddings, task_proteins
    from plmforge.core.spec import validate_spec
    from plmforge.plugins.references.onehot import one_hot

    raw = tiny_spec_dict(tmp_path)
    raw["tasks"] = [{"name": "localization", "label": "loc", "max_train_proteins": 48, "max_test_proteins": 24,
                     "max_length": 64, "head": {"kind": "linear", "epochs": 2, "batch_size": 16}}]
    raw["evaluation"] = {"references": ["onehot"], "bootstrap_resamples": 50, "embedding_cache": False}
    spec = validate_spec(raw)
    proteins = task_proteins(EvaluationPlan.from_spec(spec))
    embeddings = tmp_path / "embeddings.safetensors"
    save_file({ident: one_hot(sequence) for ident, (sequence, _) in proteins.items()}, str(embeddings))
    outcomes, run_id = evaluate_embeddings(spec, embeddings, say=lambda text: None)

    client = MlflowClient(raw["tracking"]["tracking_uri"])
    root = {a.path for a in client.list_artifacts(run_id) if not a.is_dir}
    assert {"loc.model.confusion.png", "loc.onehot.confusion.png"} <= root
    children = client.search_runs([client.get_run(run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert len(children) == 2
    for child in children:
        representation = child.data.tags["plmforge.reference"]
        name = f"loc.{representation}.confusion.png"
        assert [a.path for a in client.list_artifacts(child.info.run_id)
                if a.path.endswith(".png")] == [name]  # at the root: no figures/ folder
        outcome = next(o for o in outcomes if o.reference == representation)
        low, high = outcome.intervals["accuracy"]
        score = f"accuracy {outcome.metrics['test']['accuracy']:.3f} [{low:.3f}, {high:.3f}]"
        local = client.download_artifacts(child.info.run_id, name, str(tmp_path / representation))
        assert png_title(local) == f"loc · {representation} · {run_id[:6]} — {score}"
        assert outcome.figures == [tmp_path / "run" / "figures" / name]
