"""Antimicrobial peptides: AMP or not, per peptide (modlAMP's AMP vs UniProt set)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from plmforge.core.heads import HeadSettings
from plmforge.core.task import Task, TaskConfig, TaskData, TaskSplit
from plmforge.plugins.tasks.builtin_data import load_antimicrobial


class AntimicrobialConfig(TaskConfig):
    head: HeadSettings = Field(default_factory=lambda: HeadSettings(epochs=10), description=(
        "How the head is trained (10 epochs by default)."))


class Antimicrobial(Task):
    """Per-peptide binary antimicrobial activity; accuracy, MCC and AUROC."""

    Config = AntimicrobialConfig
    level = "protein"
    target = "classification"

    def load(self) -> TaskData:
        splits: dict[str, TaskSplit] = {}
        for number, (sequence, label, split_name) in enumerate(load_antimicrobial()):
            split = splits.setdefault(split_name, TaskSplit([], [], []))
            split.ids.append(f"peptide{number}")
            split.sequences.append(sequence)
            split.labels.append(np.array(label, dtype=np.int64))
        return TaskData(splits, classes=["non-AMP", "AMP"], source="builtin antimicrobial (modlAMP)")
