"""Subcellular localization: one of 13 SCL2205 location classes per protein.

The proteins are the built-in pretraining corpus with its homology-reduced split, as the issue
intends: pretraining sees only the train split, and this task is scored on the held-out test split.
The corpus's homology-reduced split still has a few proteins identical to one in an earlier split
(7 validation and 19 test proteins); they are dropped here, so no test protein was seen in training.
"""

from __future__ import annotations

import numpy as np

from plmforge.core.data.sources import load_builtin
from plmforge.core.heads import HeadSettings
from plmforge.core.task import Task, TaskConfig, TaskData, TaskSplit, head_field


class LocalizationConfig(TaskConfig):
    head: HeadSettings = head_field(
        "1000 proteins are 63 batches an epoch; a probe on mean one-hot residues is still improving at 60 epochs",
        linear={"epochs": 100, "patience": 10}, convbert={"epochs": 10, "projection": 128, "patience": None})


class Localization(Task):
    """Per-protein subcellular location (13 classes, SCL2205); accuracy and macro-F1."""

    Config = LocalizationConfig
    level = "protein"
    target = "classification"

    def load(self) -> TaskData:
        sets = load_builtin("scl2205")
        classes = sorted(set(sets["train"].labels))
        index = {name: i for i, name in enumerate(classes)}
        splits, seen, dropped = {}, set(), {}
        for name in ("train", "validation", "test"):
            proteins = sets[name]
            keep = [i for i in range(len(proteins)) if name == "train" or proteins.sequence(i) not in seen]
            dropped[name] = len(proteins) - len(keep)
            splits[name] = TaskSplit([proteins.name(i) for i in keep], [proteins.sequence(i) for i in keep],
                                     [np.array(index[proteins.label(i)], dtype=np.int64) for i in keep])
            seen.update(splits[name].sequences)
        note = (f"{dropped['validation']} validation and {dropped['test']} test proteins identical to one in an "
                f"earlier split")
        return TaskData(splits, classes=classes, source="builtin:scl2205", notes={"dropped": note})
