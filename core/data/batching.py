"""Length-bucketed batch plans and padding.

Proteins of similar length are batched together so little compute goes to padding: each epoch the
proteins are shuffled, stably sorted by padded length, cut into batches (by a token budget or a
sequence count), and the batch order is shuffled. A plan depends only on (seed, stream, epoch), so a
resumed run recomputes it and continues at the exact batch.

At UniRef50 scale (tens of millions of proteins) a whole-epoch plan would hold a permutation and
millions of index arrays, so an epoch is planned in windows of at most :data:`PLAN_WINDOW` proteins
(:class:`EpochPlan`): each window is shuffled, sorted, cut and its batches shuffled exactly as above,
and only the current window's plan is in memory. A corpus that fits one window gets exactly the plan
it always had. Padding lengths are rounded up to
``pad_to_multiple``, which bounds the number of distinct shapes (what compiled backends care about),
except that a batch is never padded past the length of a full crop (``length_cap``): most training
batches at a typical ``max_length`` are full crops, and rounding 257 tokens up to 272 would spend 6 %
of the compute on padding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from plmforge.core.objective import Feature

#: Most proteins planned together. 2**20 proteins keep a window's plan to a few tens of MB while
#: each window still holds thousands of proteins of every common length, so length bucketing wastes
#: no more padding than a whole-epoch plan (benchmarks/planning_scale.py measures both).
PLAN_WINDOW = 2**20

#: Tokens an objective typically adds around a protein (``</s>``, a task prefix); used for planning only.
PLANNING_OVERHEAD = 2


def round_up(value: int | np.ndarray, multiple: int) -> int | np.ndarray:
    return -(-value // multiple) * multiple


def padded_length(longest: int | np.ndarray, multiple: int, cap: int | None = None) -> int | np.ndarray:
    """``longest`` rounded up to ``multiple``, but no further than ``cap`` when it fits under it."""
    padded = round_up(longest, multiple)
    return padded if cap is None else np.where((longest <= cap) & (padded > cap), cap, padded)


@dataclass(frozen=True)
class BatchPlanner:
    """Cuts proteins into batches of similar length."""

    max_length: int
    pad_to_multiple: int = 16
    tokens: int | None = None
    sequences: int | None = None

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.sequences is None):
            raise ValueError("BatchPlanner needs exactly one of tokens or sequences")

    @property
    def length_cap(self) -> int:
        """Padded length of a full-length crop: rounded to a multiple of at most 8 (what GPU kernels like)."""
        return int(round_up(self.max_length + PLANNING_OVERHEAD, min(self.pad_to_multiple, 8)))

    def padded_lengths(self, lengths: np.ndarray) -> np.ndarray:
        cropped = np.minimum(lengths, self.max_length) + PLANNING_OVERHEAD
        return padded_length(cropped, self.pad_to_multiple, self.length_cap)

    def plan(self, lengths: np.ndarray, rng: np.random.Generator, shuffle: bool = True) -> list[np.ndarray]:
        """Index arrays, one per batch; every protein appears exactly once."""
        n = len(lengths)
        order = rng.permutation(n) if shuffle else np.arange(n)
        padded = self.padded_lengths(np.asarray(lengths))
        order = order[np.argsort(padded[order], kind="stable")]
        if self.sequences is not None:
            batches = [order[i:i + self.sequences] for i in range(0, n, self.sequences)]
        else:
            batches = self._by_tokens(order, padded[order])
        if shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _by_tokens(self, order: np.ndarray, padded_sorted: np.ndarray) -> list[np.ndarray]:
        """Greedy cut of the length-sorted order so that count × longest ≤ the token budget.

        A batch starting at ``start`` takes protein ``j`` while ``(j + 1 - start) * padded[j] ≤ tokens``
        (lengths ascend, so that is monotone in ``j``), i.e. while ``last_start[j] ≤ start`` with
        ``last_start[j] = j + 1 - tokens // padded[j]``, which increases strictly: one binary search per
        batch instead of a Python step per protein. At least one protein per batch.
        """
        n = len(order)
        last_start = np.arange(1, n + 1, dtype=np.int64) - self.tokens // np.asarray(padded_sorted, dtype=np.int64)
        batches, start = [], 0
        while start < n:
            end = max(start + 1, int(np.searchsorted(last_start, start, side="right")))
            batches.append(order[start:end])
            start = end
        return batches


def _coprime_multiplier(n: int, rng: np.random.Generator) -> int:
    """A random ``a`` in [1, n) with gcd(a, n) = 1: ``i -> (a*i + b) mod n`` is then a bijection of range(n)."""
    while True:
        a = int(rng.integers(1, n))
        if math.gcd(a, n) == 1:
            return a


@dataclass
class EpochPlan:
    """One epoch's batches, planned one window of proteins at a time (see the module docstring).

    ``key`` seeds it (e.g. ``(seed, stream, epoch)``). With ``n ≤ window`` proteins there is one window
    and its plan is ``planner.plan(lengths, default_rng(key))``, the whole-epoch plan. Otherwise the
    proteins are dealt into ``ceil(n / window)`` windows of near-equal size by a seeded affine
    bijection ``i -> (a*i + b) mod n`` (no O(n) permutation array), the windows are visited in a
    seeded order, and each window is planned with its own generator. Batches are addressed by
    (window, position), which is what a stream saves to resume.
    """

    planner: BatchPlanner
    lengths: np.ndarray
    key: tuple[int, ...]
    window: int = PLAN_WINDOW
    windows: int = field(init=False)
    _cached: tuple[int, list[np.ndarray]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.lengths)
        if n == 0:
            raise ValueError("cannot plan batches over no proteins")
        self.windows = -(-n // self.window)
        if self.windows > 1:
            rng = np.random.default_rng(list(self.key))
            self._multiplier, self._offset = _coprime_multiplier(n, rng), int(rng.integers(0, n))
            self._order = rng.permutation(self.windows)

    def members(self, window: int) -> np.ndarray:
        """The protein indices of the ``window``-th window visited (all of them when there is one window)."""
        n = len(self.lengths)
        if self.windows == 1:
            return np.arange(n)
        slot = int(self._order[window])
        positions = np.arange(slot * n // self.windows, (slot + 1) * n // self.windows, dtype=np.int64)
        return (self._multiplier * positions + self._offset) % n

    def batches(self, window: int) -> list[np.ndarray]:
        """Index arrays of the ``window``-th window's batches, in training order (the last window asked is kept)."""
        if self._cached is None or self._cached[0] != window:
            if self.windows == 1:
                plan = self.planner.plan(self.lengths, np.random.default_rng(list(self.key)))
            else:
                members = self.members(window)
                rng = np.random.default_rng([*self.key, _WINDOW_STREAM, int(self._order[window])])
                plan = [members[batch] for batch in self.planner.plan(self.lengths[members], rng)]
            self._cached = (window, plan)
        return self._cached[1]


#: Tags window generators apart from the per-example ones seeded by (seed, stream, epoch, index).
_WINDOW_STREAM = 0x77696E


def collate(examples: Sequence[Mapping[str, np.ndarray]], features: Mapping[str, Feature],
            pad_to_multiple: int = 16, length_cap: int | None = None) -> dict[str, np.ndarray]:
    """Pad examples into arrays. Features on the same axis (encoder/decoder) share one padded length.

    Each axis is padded to its longest example rounded up to ``pad_to_multiple``, or to ``length_cap`` when
    that lies between the two (see the module docstring).
    """
    missing = [name for name in features if name not in examples[0]]
    if missing:
        raise KeyError(f"example lacks declared feature(s) {missing}")
    axis_length: dict[str, int] = {}
    for name, feature in features.items():
        if feature.length is not None:
            longest = max(len(example[name]) for example in examples)
            axis_length[feature.length] = max(axis_length.get(feature.length, 1), longest)
    axis_length = {axis: int(padded_length(length, pad_to_multiple, length_cap))
                   for axis, length in axis_length.items()}
    batch: dict[str, np.ndarray] = {}
    for name, feature in features.items():
        if feature.length is None:
            batch[name] = np.stack([np.asarray(e[name], dtype=feature.dtype) for e in examples])
            continue
        shape = (len(examples), axis_length[feature.length], *feature.trailing)
        out = np.full(shape, feature.pad_value, dtype=feature.dtype)
        for row, example in enumerate(examples):
            values = example[name]
            out[row, : len(values)] = values
        batch[name] = out
    return batch
