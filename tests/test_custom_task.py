"""The custom task: user CSV and labelled FASTA files, per protein or per residue, classes or values."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from plmforge.core.errors import DataError
from plmforge.core.heads import IGNORE
from plmforge.plugins.tasks.custom import CustomTask, CustomTaskConfig

SEQUENCES = ["MKTAYIAKQR", "GSHMLEDPVA", "MNPQRSTVWY", "ACDEFGHIKL", "MKKLLPTAAA", "MSTNPKPQRK"]


def make(**options):
    return CustomTask(CustomTaskConfig(**options))


def test_csv_with_split_column_per_protein_regression(tmp_path):
    path = tmp_path / "fluorescence.csv"
    rows = ["sequence,target,set"] + [f"{s},{i * 0.5},{'train' if i < 4 else 'test'}"
                                      for i, s in enumerate(SEQUENCES)]
    path.write_text("\n".join(rows) + "\n")
    task = make(data=str(path), label_column="target", split_column="set", target="regression",
                validation_fraction=0.25)
    data = task.load()
    assert data.classes is None and task.level == "protein" and task.target == "regression"
    assert len(data.splits["test"]) == 2
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 4
    test = data.splits["test"]
    assert test.sequences == SEQUENCES[4:]
    assert [float(y) for y in test.labels] == [2.0, 2.5]
    problem = task.problem(data)
    assert (problem.level, problem.target, problem.num_outputs) == ("protein", "regression", 1)


def test_fasta_per_protein_classes_from_header(tmp_path):
    train = tmp_path / "train.fasta"
    train.write_text(">p1 Membrane\nMKTAYIAKQR\n>p2 label=Nucleus extra words\nGSHML\nEDPVA\n>p3 Nucleus\nMNPQ\n")
    test = tmp_path / "test.fa.gz"
    with gzip.open(test, "wt") as handle:
        handle.write(">t1 Membrane\nACDEFGHIKL\n")
    data = make(train=str(train), validation=str(train), test=str(test)).load()
    assert data.classes == ["Membrane", "Nucleus"]
    assert data.splits["train"].sequences[1] == "GSHMLEDPVA"  # wrapped lines joined
    assert [int(y) for y in data.splits["train"].labels] == [0, 1, 1]
    assert data.splits["test"].ids == ["t1"]


def test_per_residue_fasta_with_ignored_residues(tmp_path):
    train = tmp_path / "ss.fasta"
    train.write_text(">a\nMKTAY\nHHEXC\n>b\nGSHML\nCCCHH\n")
    data = make(train=str(train), validation=str(train), test=str(train), level="residue").load()
    assert data.classes == ["C", "E", "H"]
    np.testing.assert_array_equal(data.splits["train"].labels[0], [2, 2, 1, IGNORE, 0])


def test_per_residue_regression_csv(tmp_path):
    path = tmp_path / "values.tsv"
    path.write_text("sequence\tlabel\nMKT\t0.5 nan 2\nGSH\t1 1 1\n")
    data = make(train=str(path), validation=str(path), test=str(path), level="residue",
                target="regression").load()
    values = data.splits["test"].labels[0]
    assert values[0] == 0.5 and np.isnan(values[1]) and values[2] == 2.0


@pytest.mark.parametrize("content, message", [
    ("sequence,label\nMKT,A\n", "no column 'target'"),
    ("sequence,target\nMK1T,A\n", "not residue letters"),
])
def test_csv_errors_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        make(train=str(path), test=str(path), label_column="target").load()
    assert "bad.csv" in str(info.value)


def test_errors_for_labels_and_files(tmp_path):
    train = tmp_path / "train.fasta"
    train.write_text(">a\nMKTAY\nHHE\n")
    with pytest.raises(DataError, match=r"ss.fasta|train.fasta.*3 labels for 5 residues"):
        make(train=str(train), validation=str(train), test=str(train), level="residue").load()
    with pytest.raises(DataError, match="task file not found"):
        make(train=str(tmp_path / "missing.csv"), test=str(train)).load()
    per_protein = tmp_path / "p.fasta"
    per_protein.write_text(">only_id\nMKT\n")
    with pytest.raises(DataError, match="no label in header"):
        make(train=str(per_protein), test=str(per_protein)).load()
    test = tmp_path / "test.fasta"
    test.write_text(">x Golgi\nMKT\n")
    train.write_text(">a Nucleus\nMKTAY\n>b Nucleus\nMKTAA\n")
    with pytest.raises(DataError, match="'Golgi' is not a known class"):
        make(train=str(train), validation=str(train), test=str(test)).load()


def test_config_needs_files():
    with pytest.raises(ValueError, match="give 'train' and 'test'"):
        CustomTaskConfig(train="a.csv")
    with pytest.raises(ValueError, match="not both"):
        CustomTaskConfig(data="a.csv", train="b.csv", test="c.csv")
