"""The Task contract: a downstream evaluation of a pretrained model.

A task owns its dataset, its head (linear probe, light ConvBERT or fine-tuning), its loss and its
metrics, and runs as a nested MLflow run under the pretraining run. Tasks arrive with the
downstream-evaluation work; the contract is here so the registry can check task plugins now.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

from plmforge.core.strict import StrictModel


class TaskConfig(StrictModel):
    """Base class of a task's options."""


class Task(ABC):
    """Base class of task plugins, registered under the ``plmforge.tasks`` entry point."""

    Config: ClassVar[type[TaskConfig]] = TaskConfig
    #: Shape of the prediction: one label per residue, per residue pair, or per protein.
    level: ClassVar[Literal["residue", "pair", "protein"]] = "protein"

    def __init__(self, config: TaskConfig):
        self.config = config

    @abstractmethod
    def evaluate(self, embedder: Any) -> dict[str, float]:
        """Train the task head on embeddings from ``embedder`` and return test metrics."""
