"""Contact prediction: residue pairs whose Cβ atoms (Cα for glycine) are closer than 8 Å.

Pairs closer than ``min_separation`` in sequence are not trained on (they are trivially near); the
metrics are the usual precisions of the top L, L/2 and L/5 predictions among long-range
(|i−j| ≥ 24) and medium-range (12 ≤ |i−j| ≤ 23) pairs.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from plmforge.core.heads import IGNORE, HeadSettings
from plmforge.core.task import Task, TaskConfig, TaskData, head_field, splits_from_rows
from plmforge.plugins.tasks.builtin_data import contact_map, load_structures


class ContactConfig(TaskConfig):
    head: HeadSettings = head_field(
        "75 training chains are 5 batches an epoch; a bilinear probe, because a ConvBERT layer learns contacts "
        "from one-hot residues nearly as well as from a real protein LM (docs/tasks.md)",
        linear={"epochs": 100, "patience": 20}, convbert={"epochs": 40, "projection": 128, "patience": None})
    threshold: float = Field(8.0, gt=0, description="Contact distance between Cβ atoms (Cα for Gly), in Å.")
    min_separation: int = Field(6, ge=1, description="Pairs nearer than this in sequence are ignored.")


def contact_labels(cb: np.ndarray, threshold: float, min_separation: int) -> np.ndarray:
    """[L, L] int8: 1 contact, 0 none, IGNORE for missing coordinates and near-diagonal pairs."""
    labels = contact_map(cb, threshold)
    index = np.arange(len(labels))
    labels[np.abs(index[:, None] - index[None, :]) < min_separation] = IGNORE
    return labels


class ContactPrediction(Task):
    """Residue-pair contacts (Cβ < 8 Å) on the built-in PDB chains; precision at L, L/2, L/5."""

    Config = ContactConfig
    level = "pair"
    target = "classification"

    def load(self) -> TaskData:
        config = self.config
        splits = splits_from_rows((chain.split, chain.id, chain.sequence,
                                   contact_labels(chain.cb, config.threshold, config.min_separation))
                                  for chain in load_structures())
        return TaskData(splits, classes=["no contact", "contact"], source="builtin structures (coordinates)")
