"""Antimicrobial peptides: AMP or not, per peptide (modlAMP's AMP vs UniProt set)."""

from __future__ import annotations

import numpy as np

from plmforge.core.heads import HeadSettings
from plmforge.core.task import Task, TaskConfig, TaskData, head_field, splits_from_rows
from plmforge.plugins.tasks.builtin_data import load_antimicrobial


class AntimicrobialConfig(TaskConfig):
    head: HeadSettings = head_field(
        "3234 peptides are 200 batches an epoch; a probe on random-init states is still improving at 60 epochs",
        linear={"epochs": 100, "patience": 10}, convbert={"epochs": 10, "projection": 128, "patience": None})


class Antimicrobial(Task):
    """Per-peptide binary antimicrobial activity; accuracy, MCC and AUROC."""

    Config = AntimicrobialConfig
    level = "protein"
    target = "classification"

    def load(self) -> TaskData:
        rows = ((split, f"peptide{number}", sequence, np.array(label, dtype=np.int64))
                for number, (sequence, label, split) in enumerate(load_antimicrobial()))
        splits = splits_from_rows(rows)
        return TaskData(splits, classes=["non-AMP", "AMP"], source="builtin antimicrobial (modlAMP)")
