"""A deterministic, resumable stream of one objective's batches over a protein set.

Every random choice for an example (crop window, masking) comes from a numpy Generator seeded by
``(seed, stream, epoch, protein index)``, and the batch plan of an epoch from ``(seed, stream,
epoch)`` (an :class:`~plmforge.core.data.batching.EpochPlan`, window by window). The stream's whole
state is therefore ``(epoch, window, batch position in the window)``: saving those numbers is enough
to resume at the exact example with the exact masks. (A corpus that fits one window has window 0
only, so checkpoints that saved just ``(epoch, position)`` resume unchanged.)

Because an example depends on nothing but those seeds, a process of a multi-process run can step
over the micro-batches other processes train (:meth:`ExampleStream.next_share`) without making them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plmforge.core.backend import MicroBatch
from plmforge.core.data.batching import PLAN_WINDOW, BatchPlanner, EpochPlan, collate
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
    position: int = 0  # next batch within the current window of the epoch's plan
    window: int = 0  # which window of the epoch's plan (always 0 when the proteins fit one)
    plan_window: int = PLAN_WINDOW  # most proteins planned together (see plmforge.core.data.batching)
    cropped: int = field(default=0, init=False)  # training proteins cut to max_length so far
    # examples this process stepped through / made (crop, mask, collate) in training; they differ when
    # other processes make the rest (next_share). Counted since the stream was built, not saved.
    examples_planned: int = field(default=0, init=False)
    examples_made: int = field(default=0, init=False)
    _plan: EpochPlan | None = field(default=None, init=False, repr=False)
    _extras: Any = field(default=None, init=False, repr=False)
    _lengths: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.proteins, ProteinSource):
            self.proteins, self._extras = self.proteins.proteins, self.proteins.extras

    @property
    def lengths(self) -> np.ndarray:
        """Residues per protein, read once (a ProteinSet computes them on each access)."""
        if self._lengths is None:
            self._lengths = np.asarray(self.proteins.lengths)
        return self._lengths

    def _epoch_plan(self, epoch: int) -> EpochPlan:
        if self._plan is None or self._plan.key[2] != epoch:
            self._plan = EpochPlan(self.planner, self.lengths, (self.seed, self.stream, epoch), self.plan_window)
        return self._plan

    def _advance(self) -> np.ndarray:
        """The next training batch's protein indices; moves the position (to the next window, epoch) past it."""
        while True:
            plan = self._epoch_plan(self.epoch)
            if self.window < plan.windows and self.position < len(plan.batches(self.window)):
                break
            self.position, self.window = 0, self.window + 1
            if self.window >= plan.windows:
                self.epoch, self.window = self.epoch + 1, 0
        indices = plan.batches(self.window)[self.position]
        self.position += 1
        self.examples_planned += len(indices)
        return indices

    def next(self) -> MicroBatch:
        indices = self._advance()
        return self.make_batch(indices, self.epoch, train=True)

    def next_share(self, micro_batches: int, index: int = 0, count: int = 1) -> tuple[list[MicroBatch], int]:
        """The next ``micro_batches`` positions of the stream, made only where ``position % count == index``.

        Every process of a ``count``-process run calls this with its own ``index``: all of them advance
        over the whole global batch (so their states stay equal) but each crops, masks and collates only
        its share. Returns that share and the real residues of all ``micro_batches`` (for throughput).
        With ``count`` 1 it is ``micro_batches`` calls of :meth:`next`.
        """
        mine, residues = [], 0
        for position in range(micro_batches):
            indices = self._advance()
            if position % count == index:
                batch = self.make_batch(indices, self.epoch, train=True)
                mine.append(batch)
                residues += batch.residues
            else:
                lengths = self.lengths[indices]
                self.cropped += int(np.count_nonzero(lengths > self.planner.max_length))
                residues += int(np.minimum(lengths, self.planner.max_length).sum())
        return mine, residues

    def make_batch(self, indices: np.ndarray, epoch: int, train: bool) -> MicroBatch:
        examples, residues = [], 0
        for index in indices:
            rng = np.random.default_rng([self.seed, self.stream, epoch, int(index)])
            tokens = self.proteins.tokens(int(index))
            if train:
                self.examples_made += 1
                self.cropped += len(tokens) > self.planner.max_length
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
        return {"epoch": self.epoch, "window": self.window, "position": self.position, "cropped": self.cropped}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.window = int(state.get("window", 0))  # checkpoints before windowed plans had one window
        self.cropped = int(state.get("cropped", 0))

    def evaluation_batches(self, limit: int | None) -> Iterator[MicroBatch]:
        """The same validation batches every time: fixed plan, first-window crops, fixed masks."""
        plan = EpochPlan(self.planner, self.lengths, (self.seed, self.stream, EVAL_EPOCH), self.plan_window)
        made = 0
        for window in range(plan.windows):
            for indices in plan.batches(window):
                if limit is not None and made >= limit:
                    return
                made += 1
                yield self.make_batch(indices, EVAL_EPOCH, train=False)
