"""Length-bucketed batch plans and padding.

Proteins of similar length are batched together so little compute goes to padding: each epoch the
proteins are shuffled, stably sorted by padded length, cut into batches (by a token budget or a
sequence count), and the batch order is shuffled. A plan depends only on (seed, stream, epoch), so a
resumed run recomputes it and continues at the exact batch. Padding lengths are rounded up to
``pad_to_multiple``, which bounds the number of distinct shapes (what compiled backends care about),
except that a batch is never padded past the length of a full crop (``length_cap``): most training
batches at a typical ``max_length`` are full crops, and rounding 257 tokens up to 272 would spend 6 %
of the compute on padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from plmforge.core.objective import Feature

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
        """Greedy cut of the length-sorted order so that count × longest ≤ the token budget."""
        batches, start = [], 0
        n = len(order)
        while start < n:
            # lengths are sorted ascending: the longest in order[start:end] is padded_sorted[end-1]
            end = start + 1
            while end < n and (end + 1 - start) * padded_sorted[end] <= self.tokens:
                end += 1
            batches.append(order[start:end])
            start = end
        return batches


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
