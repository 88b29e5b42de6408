"""A bounded set of array shapes, so compiled steps compile a bounded number of times.

``jax.jit`` compiles once per distinct input shape. Batches from the length-bucketed planner already
have lengths rounded to ``pad_to_multiple``, which bounds the shapes (the quickstart meets 19 in 600
steps; batches of full-length crops are padded to the crop length, one more shape), so by default
only the row count is rounded, to a multiple of the device count. Where
shapes still vary too much (long proteins, a small ``pad_to_multiple``), a growth factor above 1
rounds every axis up a geometric ladder: a number of shapes logarithmic in the largest size, for
up to that factor more padding per axis (measured on the quickstart: 1.25 gives 13 shapes instead
of 19 for 25 % more compute, so it is off by default).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from plmforge.core.data.batching import round_up
from plmforge.core.objective import Feature


def rung(size: int, multiple: int, growth: float) -> int:
    """The smallest ladder value >= ``size``: multiples of ``multiple`` growing by about ``growth``."""
    value = multiple
    while value < size:
        value = max(value + multiple, int(round_up(int(value * growth), multiple)))
    return value


def ladder_shapes(arrays: Mapping[str, np.ndarray], features: Mapping[str, Feature], row_multiple: int,
                  length_multiple: int, growth: float) -> dict[str, tuple[int, ...]]:
    """The shape of each array of a collated batch with rows and encoder/decoder axes at ladder sizes."""
    rows = next(iter(arrays.values())).shape[0]
    target_rows = rung(rows, row_multiple, growth)
    axis_length: dict[str, int] = {}
    for name, feature in features.items():
        if feature.length is not None and name in arrays:
            length = arrays[name].shape[1]  # already rounded by the collator: kept unless a ladder is asked for
            axis_length.setdefault(feature.length, rung(length, length_multiple, growth) if growth > 1 else length)
    shapes = {}
    for name, array in arrays.items():
        feature = features.get(name)
        shape = [target_rows, *array.shape[1:]]
        if feature is not None and feature.length is not None:
            shape[1] = axis_length[feature.length]
        shapes[name] = tuple(shape)
    return shapes


def pad_batch(arrays: Mapping[str, np.ndarray], features: Mapping[str, Feature], row_multiple: int,
              length_multiple: int, growth: float) -> dict[str, np.ndarray]:
    """Pad rows and the encoder/decoder axes of a collated batch up to ladder sizes with pad values.

    Padded rows consist of pad values only, so objectives see them as empty examples.
    """
    return pad_to_shapes(arrays, features, ladder_shapes(arrays, features, row_multiple, length_multiple, growth))


def pad_to_shapes(arrays: Mapping[str, np.ndarray], features: Mapping[str, Feature],
                  shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Pad each array up to its shape in ``shapes`` with its pad value (to join other processes' batches)."""
    out = {}
    for name, array in arrays.items():
        feature = features.get(name)
        widths = [(0, target - size) for size, target in zip(array.shape, shapes[name])]
        pad_value = feature.pad_value if feature is not None else 0
        out[name] = np.pad(array, widths, constant_values=pad_value) if any(w for _, w in widths) else array
    return out
