"""The Reference contract: a representation scored by the same heads as the model, next to it.

A number on its own says little: Q3 0.62 is good or bad only next to what one-hot residues, a randomly
initialised model of the same size and a real pretrained protein LM score with the same head on the
same proteins. Each of those is a reference plugin (entry point group ``plmforge.references``), so a
third party adds ESM or their own embedder the way they add an objective: subclass :class:`Reference`,
give it a ``Config``, implement :meth:`Reference.embed`.

Life of a reference in an evaluation: the evaluator builds it from its spec item
(``evaluation.references: [onehot, {name: unirep, size: 1900}]``), calls :meth:`Reference.setup` once
with a :class:`ReferenceContext` (raise :class:`ReferenceUnavailable` there when it cannot be built: a
missing package or file, a width mismatch; the evaluation logs the message and goes on with the other
references and tasks), then :meth:`Reference.embed` for each split of each task. Embeddings are per
residue, ``[L, d]`` float32, one row per residue of the protein as given (no prefix or end token rows).

Heads on references are always trained on frozen embeddings, except where :meth:`Reference.encoder`
returns a backend (the random-init reference): then a task asking for fine-tuning fine-tunes it too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field

from plmforge.core.errors import PlmforgeError
from plmforge.core.strict import StrictModel

if TYPE_CHECKING:
    from plmforge.core.backend import Backend
    from plmforge.core.vocab import Vocab


class ReferenceUnavailable(PlmforgeError):
    """A reference cannot be built here (package missing, file unreadable, shapes that do not fit)."""


class ReferenceConfig(StrictModel):
    """Options every reference has; a reference's ``Config`` subclasses this and adds its own."""

    label: str | None = Field(
        None, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
        description="Name in run names, the plmforge.reference tag and tables; defaults to the "
                    "reference's own (e.g. 'onehot', 'unirep1900').")


@dataclass(frozen=True)
class ReferenceContext:
    """What the evaluation offers a reference: the model's vocabulary, batch size, seed, a fresh model."""

    vocab: Vocab
    batch_tokens: int = 8192
    seed: int = 0
    #: builds the evaluated model's architecture with fresh weights (None when the model's spec is unknown)
    random_model: Callable[[], Backend] | None = None
    #: the backend name the run uses ("torch", "jax"), for references that build a plmforge model
    backend_name: str | None = None


class Reference(ABC):
    """Base class of reference plugins. Subclasses set ``Config`` and ``title`` and implement :meth:`embed`."""

    Config: ClassVar[type[ReferenceConfig]] = ReferenceConfig
    #: Human name for tables and run names, e.g. "one-hot", "random init", "UniRep 1900".
    title: ClassVar[str] = ""

    def __init__(self, config: ReferenceConfig):
        self.config = config

    @property
    def label(self) -> str:
        """The name in metric keys: the config's ``label``, else :meth:`default_label`."""
        return self.config.label or self.default_label()

    def default_label(self) -> str:
        """The label when the spec gives none; override when options change the representation (size)."""
        return type(self).__name__.lower()

    def describe(self) -> str:
        """What tables and run names call it (defaults to ``title``, else the label)."""
        return self.title or self.label

    def setup(self, context: ReferenceContext) -> None:  # noqa: B027 - optional hook
        """Load weights or check what the reference needs; raise :class:`ReferenceUnavailable` if it cannot."""

    @abstractmethod
    def embed(self, sequences: list[str]) -> list[np.ndarray]:
        """Per-residue float32 ``[len(sequence), d]`` embeddings, one per sequence, in order."""

    def cache_key(self) -> str | None:
        """A stable id of this representation's weights, for the embedding cache (None: never cached)."""
        return None

    def encoder(self) -> Backend | None:
        """A backend whose encoder a fine-tuning head can train (only the random-init reference has one)."""
        return None
