"""The random-init reference: the evaluated model's architecture with fresh weights.

It separates what pretraining taught the weights from what the architecture and the head give for
free. Its encoder is a real plmforge backend, so a task that fine-tunes (``finetune: full`` or
``lora``) fine-tunes this model too, and frozen heads read it with the task's prefix like the model.
"""

from __future__ import annotations

import numpy as np

from plmforge.core.backend import Backend
from plmforge.core.reference import Reference, ReferenceContext, ReferenceUnavailable


class RandomInit(Reference):
    """The evaluated model's architecture, initialised from the run's seed and never trained."""

    title = "random init"

    def __init__(self, config):
        super().__init__(config)
        self._backend: Backend | None = None
        self._context: ReferenceContext | None = None
        self._key: str | None = None

    def default_label(self) -> str:
        return "random"

    def setup(self, context: ReferenceContext) -> None:
        if context.random_model is None:
            raise ReferenceUnavailable(
                "needs the evaluated model's architecture to initialise at random, and this evaluation has "
                "none (embeddings scored with --embeddings come from an unknown model)")
        self._context = context
        self._backend = context.random_model()
        self._key = None

    def encoder(self) -> Backend | None:
        return self._backend

    def embed(self, sequences: list[str]) -> list[np.ndarray]:
        """Per-residue states without a task prefix (the evaluator embeds through :meth:`encoder` itself)."""
        from plmforge.core.embedding import embed_sequences

        if self._backend is None or self._context is None:
            raise ReferenceUnavailable("setup() has not built the random-init model")
        return embed_sequences(self._backend, self._context.vocab, sequences,
                               batch_tokens=self._context.batch_tokens)

    def cache_key(self) -> str | None:
        """A digest of the fresh weights (hashed on first use only: without a cache it is never needed)."""
        if self._backend is None:
            return None
        if self._key is None:
            from plmforge.core.evaluation import weights_key

            self._key = "random-" + weights_key(self._backend.weights())
        return self._key
