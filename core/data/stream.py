"""A deterministic, resumable stream of one objective's batches over a protein set.

Every random choice for an example (crop window, masking) comes from a numpy Generator seeded by
``(seed, stream, epoch, protein index)``, and the batch plan of an epoch from ``(seed, stream,
epoch)``. The stream's whole state is therefore ``(epoch, batch position)``: saving those two numbers
is enough to resume at the exact example with the exact masks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plmforge.core.backend import MicroBatch
from plmforge.core.data.batching import BatchPlanner, collate
from plmforge.core.objective import Objective, Protein, ProteinSource

#: Marks evaluation generators so validation masks never coincide with training ones.
EVAL_EPOCH = 2**31 - 1


def crop_start(length: int, max_length: int, rng: np.random.Generator | None) -> int:
    """Start of a random window of ``max_length`` residues (training), or 0 when ``rng`` is None."""
    if length <= max_length or rng is None:
        return 0
    return int(rng.integers(0, length - max_length + 1))


def crop(tokens: np.ndarray, max_length: int, rng: np.random.Generator | None) -> np.ndarray:
    """A random window of ``max_length`` residues (training), or the first window when ``rng`` is None."""
    start = crop_start(len(tokens), max_length, rng)
    return tokens[start:start + max_length]


@dataclass
class ExampleStream:
    """Batches of ``objective`` examples drawn from ``proteins``, epoch after epoch.

    ``proteins`` is a ProteinSet, or the :class:`ProteinSource` the objective prepared for the split
    (its per-residue extras are cropped with the tokens).
    """

    objective: Objective
    proteins: Any  # ProteinSource, or plmforge.core.data.proteins.ProteinSet
    planner: BatchPlanner
    seed: int
    stream: int = 0
    epoch: int = 0
    position: int = 0
    cropped: int = field(default=0, init=False)  # training proteins cut to max_length so far
    _plan: list[np.ndarray] | None = field(default=None, init=False, repr=False)
    _plan_epoch: int = field(default=-1, init=False, repr=False)
    _extras: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.proteins, ProteinSource):
            self.proteins, self._extras = self.proteins.proteins, self.proteins.extras

    def _epoch_plan(self) -> list[np.ndarray]:
        if self._plan_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.stream, self.epoch])
            self._plan = self.planner.plan(self.proteins.lengths, rng)
            self._plan_epoch = self.epoch
        return self._plan

    def next(self) -> MicroBatch:
        plan = self._epoch_plan()
        if self.position >= len(plan):
            self.epoch, self.position = self.epoch + 1, 0
            plan = self._epoch_plan()
        indices = plan[self.position]
        self.position += 1
        return self.make_batch(indices, self.epoch, train=True)

    def make_batch(self, indices: np.ndarray, epoch: int, train: bool) -> MicroBatch:
        examples, residues = [], 0
        for index in indices:
            rng = np.random.default_rng([self.seed, self.stream, epoch, int(index)])
            tokens = self.proteins.tokens(int(index))
            if train and len(tokens) > self.planner.max_length:
                self.cropped += 1
            start = crop_start(len(tokens), self.planner.max_length, rng if train else None)
            window = slice(start, start + self.planner.max_length)
            extras = ({k: v[window] for k, v in self._extras(int(index)).items()}
                      if self._extras is not None else {})
            tokens = tokens[window]
            residues += len(tokens)
            protein = Protein(tokens=tokens, name=self.proteins.name(int(index)), extras=extras, offset=start)
            examples.append(self.objective.make_example(protein, rng))
        arrays = collate(examples, self.objective.features(), self.planner.pad_to_multiple, self.planner.length_cap)
        return MicroBatch(arrays=arrays, weight=self.objective.weight(arrays), residues=residues)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "cropped": self.cropped}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.cropped = int(state.get("cropped", 0))

    def evaluation_batches(self, limit: int | None) -> Iterator[MicroBatch]:
        """The same validation batches every time: fixed plan, first-window crops, fixed masks."""
        rng = np.random.default_rng([self.seed, self.stream, EVAL_EPOCH])
        plan = self.planner.plan(self.proteins.lengths, rng)
        for indices in plan[:limit]:
            yield self.make_batch(indices, EVAL_EPOCH, train=False)
