"""check_head_data: every backend refuses ill-fitting head data with the same message, before training."""

from __future__ import annotations

import numpy as np
import pytest

from plmforge.core.errors import DataError
from plmforge.core.heads import IGNORE, HeadData, HeadProblem, check_head_data

RESIDUE_CLASSES = HeadProblem("residue", "classification", 3)
PAIR = HeadProblem("pair", "classification", 1)
PROTEIN_VALUE = HeadProblem("protein", "regression", 1)


def frozen(lengths=(5, 7), dim=4):
    inputs = [np.zeros((n, dim), np.float32) for n in lengths]
    return HeadData(inputs, [np.full(n, IGNORE, np.int64) for n in lengths])


def tokens(lengths=(5, 7), offset=1):
    inputs = [np.arange(n + offset + 1, dtype=np.int32) for n in lengths]  # prefix, residues, </s>
    return HeadData(inputs, [np.zeros(n, np.int64) for n in lengths], offset)


def test_well_formed_splits_pass():
    check_head_data(RESIDUE_CLASSES, "frozen", {"train": frozen(), "validation": frozen((3,)), "test": frozen(())})
    check_head_data(RESIDUE_CLASSES, "lora", {"train": tokens(), "validation": tokens((9,))})
    pair = HeadData([np.zeros((3, 4), np.float32)], [np.array([[1, 0, IGNORE]] * 3, np.int8)])
    check_head_data(PAIR, "frozen", {"train": pair})
    check_head_data(PROTEIN_VALUE, "frozen", {"train": HeadData([np.ones((2, 4), np.float32)], [np.array(np.nan)])})


@pytest.mark.parametrize(("problem", "finetune", "splits", "message"), [
    (RESIDUE_CLASSES, "frozen",
     {"train": frozen(), "validation": HeadData([np.zeros((5, 6), np.float32)], [np.zeros(5, np.int64)])},
     r"validation protein 0: frozen heads need \[L, 4\] embeddings .* got shape \(5, 6\)"),
    (RESIDUE_CLASSES, "full", {"train": frozen()}, "train protein 0: fine-tuning needs 1-d integer token ids"),
    (RESIDUE_CLASSES, "frozen", {"train": HeadData(frozen().inputs, [np.zeros(5, np.int64), np.zeros(6, np.int64)])},
     r"train protein 1: residue-level labels should have shape \(7,\) for 7 residues, got \(6,\)"),
    (RESIDUE_CLASSES, "lora", {"train": tokens(), "test": tokens(offset=0)},
     "test: token offset 0, but the training split's is 1"),
    (RESIDUE_CLASSES, "frozen", {"train": HeadData(frozen().inputs, [np.zeros(5, np.int64), np.full(7, 3)])},
     r"train protein 1: class labels outside 0..2 \(or -1 for missing\)"),
    (RESIDUE_CLASSES, "frozen", {"train": HeadData(frozen().inputs, [np.zeros(5, np.float32), np.zeros(7)])},
     "train protein 0: class labels must be integers"),
    (PAIR, "frozen", {"train": HeadData([np.zeros((2, 4), np.float32)], [np.full((2, 2), 2, np.int8)])},
     r"class labels outside 0..1"),
    (PROTEIN_VALUE, "frozen", {"train": HeadData([np.ones((2, 4), np.float32)], [np.array(3)])},
     "train protein 0: regression labels must be floats"),
    (RESIDUE_CLASSES, "frozen", {"train": frozen(()), "validation": frozen()}, "needs at least one train protein"),
])
def test_ill_fitting_data_names_the_split_and_protein(problem, finetune, splits, message):
    with pytest.raises(DataError, match=message):
        check_head_data(problem, finetune, splits)


def test_head_batches_group_similar_lengths_and_cover_every_protein_once():
    from plmforge.core.data.sources import load_builtin
    from plmforge.core.heads import head_batches

    lengths = np.minimum(load_builtin("scl2205")["train"].lengths[:2000], 1000)
    rng = np.random.default_rng(0)

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    epoch1, epoch2 = head_batches(lengths, 16, rng), head_batches(lengths, 16, rng)
    for batches in (epoch1, epoch2, head_batches(lengths, 16)):
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(len(b) <= 16 for b in batches)
    order = rng.permutation(len(lengths))
    shuffled = [order[i:i + 16] for i in range(0, len(order), 16)]
    assert padded(epoch1) < 0.8 * padded(shuffled)  # far less padding than random batches
    assert padded(head_batches(lengths, 16)) <= padded(epoch1)  # evaluation: fully sorted
    assert {tuple(b) for b in epoch1} != {tuple(b) for b in epoch2}  # regrouped every epoch
