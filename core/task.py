"""The Task contract: a downstream evaluation of a pretrained model.

A task owns its dataset (train / validation / test proteins with labels), says what shape its
prediction has (:class:`~plmforge.core.heads.HeadProblem`) and turns predictions into metrics and
pictures, all in numpy. It never touches a framework: the run embeds the proteins (or hands token ids
for fine-tuning) and the backend trains the head (:meth:`Backend.fit_head`), so a task written once
runs on every backend, like an objective. Register a subclass under the ``plmforge.tasks`` entry point.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from plmforge.core.figures import FigureContext
from plmforge.core.heads import IGNORE, HeadProblem, HeadSettings, Level, Target
from plmforge.core.strict import StrictModel
from plmforge.core.uncertainty import MetricParts, confusion_parts, contact_parts

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class HeadDefaults:
    """A task's head defaults for each head kind; called, the settings of its default ``kind``.

    A linear probe and a ConvBERT head want different budgets (a probe on wide embeddings overfits
    within ten epochs, ConvBERT must not stop at epoch two), so a task keeps one set per kind.
    """

    kind: str
    by_kind: dict[str, dict[str, Any]]

    def for_kind(self, kind: Any) -> dict[str, Any]:
        """The default keys for a head of ``kind`` (an unknown kind gets none; validation then names it)."""
        return {**(self.by_kind.get(kind, {}) if isinstance(kind, str) else {}), "kind": kind}

    def __call__(self) -> HeadSettings:
        return HeadSettings(**self.for_kind(self.kind))


def head_field(why: str, kind: str = "linear", **by_kind: dict[str, Any]) -> Any:
    """A task config's ``head`` field: ``kind`` by default, with defaults per kind (``linear={...}``,
    ``convbert={...}``) that a spec's ``head:`` keys override; ``why`` says why these numbers."""
    defaults = HeadDefaults(kind, by_kind)
    for name in {kind, *by_kind}:
        HeadSettings(**defaults.for_kind(name))  # a bad default fails at import, not in the first spec using it
    shown = "; ".join(f"{name}: " + ", ".join(f"{k} {v}" for k, v in values.items())
                      for name, values in by_kind.items())
    return Field(default_factory=defaults,
                 description=f"How the head is trained (default kind {kind}; {shown}: {why}).")


class TaskConfig(StrictModel):
    """Options every task has; a task's ``Config`` subclasses this and adds its own."""

    head: HeadSettings = head_field(
        "a probe stops once validation loss has not fallen for 10 epochs; tasks with few or many proteins set "
        "their own", linear={"epochs": 100, "patience": 10},
        convbert={"epochs": 10, "projection": 128, "patience": None})
    prefix: str | None = Field(
        None, description="Task prefix put before each protein when embedding (e.g. '[NLU]' or '[S2S]' for "
                          "Ankh3-style models); null uses none. The model must know the token.")
    max_length: int = Field(512, ge=8, description="Residues kept per protein (the first max_length).")
    max_train_proteins: int | None = Field(
        None, ge=1, description="Train on a seeded random subset of at most this many proteins (null: all).")
    max_test_proteins: int | None = Field(
        None, ge=1, description="Evaluate on a seeded random subset of at most this many validation and test "
                                "proteins each (null: all).")

    @model_validator(mode="before")
    @classmethod
    def _head_over_task_default(cls, data: Any) -> Any:
        """A spec's ``head:`` keys are laid over the task's defaults for the head kind it asks for.

        ``head: {epochs: 3}`` keeps the task's other defaults; ``head: {kind: convbert}`` gets the task's
        ConvBERT defaults (:class:`HeadDefaults`), not the linear probe's learning rate and epochs.
        """
        if isinstance(data, dict) and isinstance(data.get("head"), dict):
            factory = cls.model_fields["head"].default_factory
            if isinstance(factory, HeadDefaults):
                default = factory.for_kind(data["head"].get("kind", factory.kind))
            elif factory is not None:
                default = factory().model_dump(exclude_unset=True)
            else:
                default = {}
            data = {**data, "head": {**default, **data["head"]}}
        return data


@dataclass
class TaskSplit:
    """Proteins of one split with one label array each (shapes and ignore values as in :class:`HeadData`)."""

    ids: list[str]
    sequences: list[str]
    labels: list[np.ndarray]

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.sequences) == len(self.labels):
            raise ValueError("ids, sequences and labels must have one entry per protein")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: np.ndarray | list[int]) -> TaskSplit:
        return TaskSplit([self.ids[i] for i in indices], [self.sequences[i] for i in indices],
                         [self.labels[i] for i in indices])

    def cropped(self, max_length: int, level: Level) -> TaskSplit:
        """Keep the first ``max_length`` residues (labels cut to match)."""
        def cut(label: np.ndarray) -> np.ndarray:
            if level == "residue":
                return label[:max_length]
            if level == "pair":
                return label[:max_length, :max_length]
            return label
        return TaskSplit(self.ids, [s[:max_length] for s in self.sequences], [cut(y) for y in self.labels])


def splits_from_rows(rows: Iterable[tuple[str, str, str, np.ndarray]]) -> dict[str, TaskSplit]:
    """Group ``(split, id, sequence, label)`` rows into one TaskSplit per split, in row order."""
    splits: dict[str, TaskSplit] = {}
    for split_name, ident, sequence, label in rows:
        split = splits.setdefault(split_name, TaskSplit([], [], []))
        split.ids.append(ident)
        split.sequences.append(sequence)
        split.labels.append(label)
    return splits


@dataclass
class TaskData:
    """A task's three splits and, for classification, its class names."""

    splits: dict[str, TaskSplit]
    classes: list[str] | None = None
    source: str = ""
    notes: dict[str, str] = field(default_factory=dict)


class Task(ABC):
    """Base class of task plugins.

    Subclasses set ``Config``, ``level`` and ``target``, implement :meth:`load` and, if they like,
    rename or add metrics in :meth:`metrics` and pictures in :meth:`figures`.
    """

    Config: ClassVar[type[TaskConfig]] = TaskConfig
    #: Shape of the prediction: one label per residue, per residue pair, or per protein.
    level: ClassVar[Level] = "protein"
    #: Classes (cross-entropy, accuracy-like metrics) or a value (mean squared error, Spearman).
    target: ClassVar[Target] = "classification"

    def __init__(self, config: TaskConfig):
        self.config = config

    @abstractmethod
    def load(self) -> TaskData:
        """The dataset, split into ``train``, ``validation`` and ``test``."""

    def problem(self, data: TaskData) -> HeadProblem:
        """What the head predicts; classification width comes from the number of classes."""
        if self.level == "pair":
            return HeadProblem("pair", "classification", 1)
        if self.target == "regression":
            return HeadProblem(self.level, "regression", 1)
        if not data.classes:
            raise ValueError(f"{type(self).__name__}: a classification task must name its classes")
        return HeadProblem(self.level, "classification", len(data.classes))

    def metrics(self, predictions: list[np.ndarray], split: TaskSplit, data: TaskData) -> dict[str, float]:
        """Metrics of one split from the head's predictions (one array per protein)."""
        from plmforge.core import metrics as m

        if self.level == "pair":
            return m.contact_metrics(predictions, split.labels)
        if self.target == "regression":
            return m.regression_metrics(*_flat_values(predictions, split))
        logits, labels = _flat_logits(predictions, split)
        if len(data.classes or ()) == 2:
            return m.binary_metrics(logits, labels)
        return m.classification_metrics(logits, labels, len(data.classes or ()))

    def metric_parts(self, predictions: list[np.ndarray], split: TaskSplit, data: TaskData) -> MetricParts | None:
        """Optional: per-protein parts of :meth:`metrics` (see :class:`MetricParts`), for a fast bootstrap.

        None recomputes :meth:`metrics` on every resample: right for any metric, and fast enough unless one
        evaluation takes milliseconds (contact precision: 0.15 s on 22 chains, minutes for 1000 resamples).
        The default gives parts for the default metrics (contacts, and accuracy / macro F1 of more than two
        classes) and None once a subclass overrides :meth:`metrics`; parts are used only where they
        reproduce :meth:`metrics` on all proteins.
        """
        if type(self).metrics is not Task.metrics:
            return None
        if self.level == "pair":
            return contact_parts(predictions, split.labels)
        if self.target == "classification" and len(data.classes or ()) > 2:
            return confusion_parts(predictions, split.labels, len(data.classes or ()))
        return None

    def figures(self, predictions: list[np.ndarray], split: TaskSplit, data: TaskData, directory: Path, *,
                context: FigureContext | None = None) -> list[Path]:
        """Pictures worth looking at: a confusion matrix, a contact map or a scatter plot, as files in ``directory``.

        ``context`` (given by the evaluation) names the task, representation, run and test scores: use
        ``context.title`` as the title and ``context.file_name(what)`` as the file name, so that the same
        figure of two runs is titled alike and compared side by side in MLflow. An override that does not
        take ``context`` still works: its files are renamed to ``<task>.<representation>.<its name>``.
        """
        from plmforge.core import figures as f
        from plmforge.core import metrics as m

        context = context if context is not None else FigureContext("", "")
        title = context.title or type(self).__name__
        directory.mkdir(parents=True, exist_ok=True)
        if self.level == "pair":
            index = int(np.argmax([len(y) for y in split.labels]))  # the longest test protein
            probabilities = 1.0 / (1.0 + np.exp(-predictions[index]))
            subtitle = f"test protein {split.ids[index]}, {len(split.labels[index])} residues"
            return [f.contact_map_png(probabilities, split.labels[index], directory / context.file_name("map"),
                                      f"{title}\n{subtitle}")]
        if self.target == "regression":
            path = directory / context.file_name("scatter")
            return [f.regression_scatter_png(*_flat_values(predictions, split), path, title)]
        classes = data.classes or []
        logits, labels = _flat_logits(predictions, split)
        matrix = m.confusion_matrix(np.argmax(logits, axis=-1), labels, len(classes), ignore=IGNORE)
        return [f.confusion_matrix_png(matrix, classes, directory / context.file_name("confusion"), title)]


def _flat_values(predictions: list[np.ndarray], split: TaskSplit) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true values of every protein (or residue) of a regression split, back to back."""
    return (np.concatenate([np.ravel(p) for p in predictions]),
            np.concatenate([np.ravel(y) for y in split.labels]).astype(np.float64))


def _flat_logits(predictions: list[np.ndarray], split: TaskSplit) -> tuple[np.ndarray, np.ndarray]:
    """[N, C] logits and [N] class labels of every protein (or residue) of a classification split."""
    return (np.concatenate([np.reshape(p, (-1, p.shape[-1])) for p in predictions]),
            np.concatenate([np.ravel(y) for y in split.labels]).astype(np.int64))
