"""The one-hot reference: each residue as an indicator of the 20 standard amino acids.

The floor a model has to beat: a head on one-hot inputs learns only what the labels teach it about
single residues (plus, for a ConvBERT head, their neighbours).
"""

from __future__ import annotations

import numpy as np

from plmforge.core.reference import Reference

#: One-hot alphabet: the 20 standard residues; anything else (X, U, B, ...) is all zeros.
ONE_HOT_LETTERS = "ACDEFGHIKLMNPQRSTVWY"

_ONE_HOT_COLUMN = np.full(256, -1, dtype=np.int64)  # byte -> column, -1 for non-standard letters
_ONE_HOT_COLUMN[np.frombuffer(ONE_HOT_LETTERS.encode(), dtype=np.uint8)] = np.arange(len(ONE_HOT_LETTERS))


def one_hot(sequence: str) -> np.ndarray:
    """[L, 20] float32 indicator of the standard residues."""
    columns = _ONE_HOT_COLUMN[np.frombuffer(sequence.encode(), dtype=np.uint8)]
    out = np.zeros((len(sequence), len(ONE_HOT_LETTERS)), dtype=np.float32)
    known = columns >= 0
    out[np.nonzero(known)[0], columns[known]] = 1.0
    return out


class OneHot(Reference):
    """One-hot residues (20 columns; non-standard letters are all zeros)."""

    title = "one-hot"

    def default_label(self) -> str:
        return "onehot"

    def embed(self, sequences: list[str]) -> list[np.ndarray]:
        return [one_hot(s) for s in sequences]

    # cache_key stays None: computing one-hot vectors is cheaper than reading them back
