"""Secondary structure: one DSSP state per residue, 3 states (Q3) or 8 states (Q8).

Labels are DSSP 8-state assignments computed from the PDB structures shipped in PyPI packages (see
``plugins/tasks/data/README.md``); the 3-state labels use the usual reduction H, G, I → H; E, B → E;
everything else → C. Residues DSSP could not assign are ignored.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from plmforge.core.heads import IGNORE, HeadSettings
from plmforge.core.task import Task, TaskConfig, TaskData, head_field, splits_from_rows
from plmforge.plugins.tasks.builtin_data import DSSP3, DSSP8, dssp8_to_3, load_structures


class SecondaryStructureConfig(TaskConfig):
    head: HeadSettings = head_field(
        "75 training chains are 5 batches an epoch: a probe on one-hot residues needs ~60 epochs at lr 1e-3, and "
        "its seeds differ by up to 2 points, so 3 are averaged; measured in docs/tasks.md",
        linear={"epochs": 200, "patience": 20, "repeats": 3},
        convbert={"epochs": 40, "projection": 128, "patience": None})
    states: Literal[3, 8] = Field(3, description="3-state (H, E, C; reported as q3) or 8-state DSSP (q8).")


def state_labels(states: str, alphabet: str) -> np.ndarray:
    """Class indices of a state string; letters outside ``alphabet`` (X: unassigned) are IGNORE."""
    table = np.full(256, IGNORE, dtype=np.int64)
    table[np.frombuffer(alphabet.encode(), dtype=np.uint8)] = np.arange(len(alphabet))
    return table[np.frombuffer(states.encode(), dtype=np.uint8)]


class SecondaryStructure(Task):
    """Per-residue DSSP secondary structure (Q3 / Q8) on the built-in PDB chains."""

    Config = SecondaryStructureConfig
    level = "residue"
    target = "classification"

    def load(self) -> TaskData:
        alphabet = DSSP3 if self.config.states == 3 else DSSP8
        reduce = dssp8_to_3 if self.config.states == 3 else str
        splits = splits_from_rows((chain.split, chain.id, chain.sequence, state_labels(reduce(chain.dssp8), alphabet))
                                  for chain in load_structures())
        return TaskData(splits, classes=list(alphabet), source="builtin structures (DSSP)")

    def metrics(self, predictions, split, data):
        values = super().metrics(predictions, split, data)
        return {f"q{self.config.states}": values["accuracy"], "macro_f1": values["macro_f1"]}
